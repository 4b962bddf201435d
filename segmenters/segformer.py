"""SegFormer semantic segmenter (e.g. ADE20K, 150 classes) through Hugging Face ``transformers``.

Loads a ``SegformerForSemanticSegmentation`` from a local folder in ``save_pretrained`` layout
(``config.json`` + ``model.safetensors`` or sharded ``model.safetensors.index.json``, optionally
``preprocessor_config.json``) or from a hub id such as
``nvidia/segformer-b0-finetuned-ade-512-512`` (needs internet or the local Hugging Face cache).
``transformers`` is imported only when a SegFormer is built (``pip install transformers``).

Preprocessing reproduces the SegFormer image processor exactly (``uint8=True``, the default):
images in [-1, 1] are rounded to 8-bit images (what the processor is given), resized with PIL
to the processor's ``size`` (default 512x512, aspect ratio not kept; PIL's bilinear resampling
works in 8 bits and rounds), multiplied by ``rescale_factor`` (1/255) and normalised with
``image_mean`` / ``image_std`` (ImageNet by default). ``uint8=False`` resizes the float image in
torch instead (antialiased, on the images' device; no 8-bit rounding: labels may then differ
from the processor's on a few pixels).
The logits (stride 4) are bilinearly upsampled (``align_corners=False``) to the output size
(the input's, divided by ``downsample``) and arg-maxed: every pixel carries exactly one label.
Labels come from ``config.id2label``; categories are all ``"object"`` unless ``categories=`` is
given or the config holds a ``categories`` list (one known category per label).

Safe loading: safetensors only. A folder holding only ``pytorch_model.bin`` (a pickle) is
refused unless ``trust_pickle=True``, which warns and lets transformers read it (transformers
still uses ``torch.load(weights_only=True)``). Missing, unexpected or mis-shaped weights are an
error (transformers alone would silently re-initialise missing ones).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.safe_load import CheckpointError, UnsafeCheckpointError

from .base import KNOWN_CATEGORIES, Segmenter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Default size of the SegFormer image processor (height, width).
DEFAULT_SIZE = (512, 512)
#: An example hub id (ADE20K, 150 classes, the smallest SegFormer).
EXAMPLE_HUB_ID = "nvidia/segformer-b0-finetuned-ade-512-512"
#: PIL resampling codes of ``preprocessor_config.json`` -> torch interpolation modes.
_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_INSTALL_HINT = "pip install transformers  (or: pip install 'gandissect[segformer]')"


def _transformers() -> Any:
    """The ``transformers`` module; a clear ImportError with the pip command when missing."""
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise ImportError(f"the segformer segmenter needs Hugging Face transformers, which is "
                          f"not installed ({exc}); install it with: {_INSTALL_HINT}") from exc


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into SegFormer ``pixel_values``.

    ``size``: (height, width) to resize to, None = keep the input size; ``scale``: the value
    of white after rescaling (255 * ``rescale_factor`` = 1, or 255 without rescaling), black is
    0; ``mean`` / ``std``: per-channel normalisation after that; ``resample``: torch
    interpolation mode (antialiased when not nearest); ``uint8``: round images to 8 bits and
    resize them with PIL as the image processor does (exact), else resize floats in torch.
    """

    size: tuple[int, int] | None = DEFAULT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0
    resample: str = "bilinear"
    uint8: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (height, width) with positive entries, got "
                             f"{self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 entries, std > 0; got {self.mean}, {self.std}")
        if self.resample not in _RESAMPLE.values():
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE.values())}, got "
                             f"{self.resample!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Preprocessing:
        """From a ``preprocessor_config.json`` dict; absent keys take the SegFormer defaults."""
        size: tuple[int, int] | None = DEFAULT_SIZE
        raw = cfg.get("size", None)
        if isinstance(raw, int):
            size = (raw, raw)
        elif isinstance(raw, Mapping) and "height" in raw and "width" in raw:
            size = (int(raw["height"]), int(raw["width"]))
        elif raw is not None:
            raise ValueError(f"preprocessor_config.json size {raw!r} is not supported; expected "
                             "an int or {'height': H, 'width': W}")
        if not cfg.get("do_resize", True):
            size = None
        scale = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale",
                                                                              True) else 255.0
        mean, std = tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std",
                                                                             IMAGENET_STD))
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        code = cfg.get("resample", 2)
        if code not in _RESAMPLE:
            raise ValueError(f"preprocessor_config.json resample {code!r} is not supported; "
                             f"supported PIL codes: {_RESAMPLE}")
        return cls(size=size, mean=_three(mean), std=_three(std), scale=scale,
                   resample=_RESAMPLE[code])


def _pil_resized(images: torch.Tensor, size: tuple[int, int] | None,
                 resample: str) -> torch.Tensor:
    """Images in [-1, 1] as rounded 8-bit images, resized by PIL to ``size`` (height, width)
    with the PIL filter of ``resample``: uint8 ``[N, 3, h, w]`` on the images' device."""
    from PIL import Image

    u8 = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if size is None or tuple(u8.shape[2:]) == tuple(size):
        return u8
    code = {v: k for k, v in _RESAMPLE.items()}[resample]
    out = []
    for img in u8.permute(0, 2, 3, 1).cpu().numpy():
        resized = Image.fromarray(img).resize((size[1], size[0]), resample=code)
        out.append(torch.from_numpy(np.asarray(resized).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).to(images.device)


def _three(values: Sequence[Any]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values, got {list(values)}")
    return float(values[0]), float(values[1]), float(values[2])


def _labels(config: Any) -> list[str]:
    """Label names in channel order from ``config.id2label`` (unique, stripped)."""
    n = int(config.num_labels)
    id2label = {int(k): str(v).strip() for k, v in dict(config.id2label).items()}
    if sorted(id2label) != list(range(n)):
        raise ValueError(f"config.id2label must name classes 0..{n - 1} (num_labels={n}), got "
                         f"keys {sorted(id2label)[:5]}...")
    labels: list[str] = []
    for i in range(n):
        name = id2label[i] or f"class{i}"
        labels.append(f"{name}-{i}" if name in labels else name)
    return labels


class SegFormerSegmenter(Segmenter):
    """One label per pixel from a ``SegformerForSemanticSegmentation`` (see module doc).

    ``model``: the transformers model (anything with ``config.id2label`` / ``num_labels`` whose
    ``model(pixel_values=x).logits`` is ``[N, C, h, w]``); ``downsample``: masks are the input
    size // this; ``categories``: one per label (default: the config's, else all "object").
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8,
                 categories: Sequence[str] | None = None, downsample: int = 1) -> None:
        super().__init__(device, batch_size)
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "id2label"):
            raise TypeError(f"model must be a transformers SegFormer with a config (id2label), "
                            f"got {type(model).__name__}")
        if int(downsample) < 1 or int(batch_size) < 1:
            raise ValueError(f"downsample and batch_size must be >= 1, got {downsample}, "
                             f"{batch_size}")
        self.model = model.float().eval().to(self.device)
        self.preprocessing = preprocessing or Preprocessing()
        self.downsample = int(downsample)
        self.labels = _labels(config)
        if categories is None:
            categories = getattr(config, "categories", None) or ["object"] * len(self.labels)
        cats = [str(c) for c in categories]
        bad = sorted({c for c in cats if c not in KNOWN_CATEGORIES})
        if len(cats) != len(self.labels) or bad:
            raise ValueError(f"categories must give one of {KNOWN_CATEGORIES} per label "
                             f"({len(self.labels)}); got {len(cats)} entries, unknown: {bad}")
        self.categories = cats

    def to(self, device: str | torch.device) -> SegFormerSegmenter:
        super().to(device)
        self.model.to(self.device)
        return self

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` ``[N, 3, h, w]`` (float32) for validated images in [-1, 1]."""
        p = self.preprocessing
        if p.uint8:
            x = _pil_resized(images, p.size, p.resample).float() * (p.scale / 255)
        else:
            x = (images.float() + 1) * (0.5 * p.scale)
        if not p.uint8 and p.size is not None and tuple(x.shape[2:]) != p.size:
            if p.resample == "nearest-exact":
                x = F.interpolate(x, size=p.size, mode="nearest-exact")
            else:  # antialias: PIL's filter support widens when shrinking, as the processor
                x = F.interpolate(x, size=p.size, mode=p.resample, align_corners=False,
                                  antialias=True)
        mean = torch.tensor(p.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
        std = torch.tensor(p.std, device=x.device, dtype=x.dtype)[None, :, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's raw logits ``[N, C, h/4, w/4]`` for validated images (one batch), where
        ``(h, w)`` is the preprocessing size (the input's when ``size`` is None)."""
        return self.model(pixel_values=self.preprocess(images)).logits

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        h, w = self.output_size(images.shape[2], images.shape[3])
        out = torch.zeros(images.shape[0], len(self.labels), h, w, dtype=torch.bool,
                          device=logits.device)
        for i in range(logits.shape[0]):  # one image at a time: C x H' x W' floats at most
            up = F.interpolate(logits[i:i + 1], size=(h, w), mode="bilinear",
                               align_corners=False)
            out[i].scatter_(0, up[0].argmax(0, keepdim=True), True)
        return out


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "nothing"


def _describe_key(key: Any) -> str:
    """A key name, or for a mismatched key ``(name, checkpoint shape, model shape)``."""
    if isinstance(key, tuple) and len(key) == 3:
        return f"{key[0]} (checkpoint {list(key[1])}, config {list(key[2])})"
    return str(key)


def _check_loading_info(info: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose keys do not match the architecture in its config."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(_describe_key(k) for k in info.get(kind, ()))
        if keys:
            more = f" ... (+{len(keys) - 6} more)" if len(keys) > 6 else ""
            problems.append(f"{kind.replace('_', ' ')}: {', '.join(keys[:6])}{more}")
    if problems:
        raise CheckpointError(f"SegFormer weights in {where} do not match its config.json "
                              f"({'; '.join(problems)}); the checkpoint and config belong to "
                              "different models")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_pretrained(source: str, where: str, use_safetensors: bool | None, hub: bool,
                     **kwargs: Any) -> nn.Module:
    """``from_pretrained`` with key checks; failures become CheckpointError (an OSError from
    a hub id, usually "could not fetch", is passed on)."""
    tf = _transformers()
    try:
        model, info = tf.SegformerForSemanticSegmentation.from_pretrained(
            source, use_safetensors=use_safetensors, output_loading_info=True,
            weights_only=True, ignore_mismatched_sizes=True, **kwargs)  # refused below
    except OSError as exc:
        if hub:
            raise
        raise CheckpointError(f"cannot load SegFormer weights from {where}: "
                              f"{_first_line(exc)}") from exc
    except Exception as exc:  # transformers raises RuntimeError, ValueError, SafetensorError...
        raise CheckpointError(f"cannot load SegFormer weights from {where}: "
                              f"{_first_line(exc)}") from exc
    _check_loading_info(info, where)
    return model


def _load_folder(folder: Path, trust_pickle: bool) -> tuple[nn.Module, Preprocessing]:
    where = repr(str(folder))
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{where} has no config.json; expected a save_pretrained folder "
                              f"(config.json + model.safetensors), found: {_listing(folder)}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(cfg_path)!r}: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("model_type") != "segformer":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{str(cfg_path)!r} describes model_type {kind!r}, not a "
                              "'segformer'")
    safe = any((folder / f).is_file() for f in ("model.safetensors",
                                                "model.safetensors.index.json"))
    pickled = any((folder / f).is_file() for f in ("pytorch_model.bin",
                                                   "pytorch_model.bin.index.json"))
    if not safe and not pickled:
        raise CheckpointError(f"{where} has no model.safetensors (nor sharded "
                              f"model.safetensors.index.json); found: {_listing(folder)}")
    if not safe:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{where} holds only pytorch_model.bin, a pickle (loading pickles can execute "
                "code), so it was refused. Convert it to safetensors on a machine you trust "
                "(model.save_pretrained(folder) writes model.safetensors), or pass "
                "trust_pickle=True only if you trust its source.")
        warnings.warn(f"loading pytorch_model.bin from {where} (trust_pickle=True); "
                      "transformers reads it with torch.load(weights_only=True)",
                      UserWarning, stacklevel=3)
    model = _from_pretrained(str(folder), where, use_safetensors=safe, hub=False,
                             local_files_only=True)
    prep_path = folder / "preprocessor_config.json"
    prep = Preprocessing()
    if prep_path.is_file():
        try:
            prep = Preprocessing.from_config(json.loads(prep_path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot use {str(prep_path)!r}: {exc}") from exc
    return model, prep


def _load_hub(hub_id: str, trust_pickle: bool,
              local_files_only: bool) -> tuple[nn.Module, Preprocessing]:
    where = f"hub id {hub_id!r}"
    if trust_pickle:
        warnings.warn(f"trust_pickle=True: {where} may be loaded from pytorch_model.bin when it "
                      "has no safetensors (transformers reads it with weights_only=True)",
                      UserWarning, stacklevel=3)
    try:
        model = _from_pretrained(hub_id, where, use_safetensors=None if trust_pickle else True,
                                 hub=True, local_files_only=local_files_only)
    except OSError as exc:
        raise FileNotFoundError(
            f"no local folder {hub_id!r}, and the SegFormer hub id {hub_id!r} could not be "
            f"fetched from the Hugging Face hub ({_first_line(exc)}). Without internet: "
            f"download it on a machine that has it (`hf download {hub_id} --local-dir DIR`) "
            "and pass path=DIR, a local folder with config.json and model.safetensors.") from exc
    prep = Preprocessing()
    try:
        from huggingface_hub import hf_hub_download

        prep_file = hf_hub_download(hub_id, "preprocessor_config.json",
                                    local_files_only=local_files_only)
        prep = Preprocessing.from_config(json.loads(Path(prep_file).read_text(encoding="utf-8")))
    except ValueError:
        raise
    except Exception as exc:  # not in the repo, or not reachable: the SegFormer defaults
        warnings.warn(f"no preprocessor_config.json for {hub_id!r} ({type(exc).__name__}); "
                      f"using the SegFormer defaults {Preprocessing()}", UserWarning,
                      stacklevel=3)
    return model, prep


def load_segmenter(device: str | torch.device = "cpu", path: str | Path | None = None, *,
                   trust_pickle: bool = False, local_files_only: bool = False,
                   size: int | tuple[int, int] | None = None,
                   **kwargs: Any) -> SegFormerSegmenter:
    """A SegFormer from ``path``: a local save_pretrained folder, or else a hub id
    ``"org/name"`` (``local_files_only=True``: only the local Hugging Face cache). ``size``
    overrides the processor's resize target; ``kwargs`` go to :class:`SegFormerSegmenter`."""
    if path is None:
        raise ValueError("the segformer segmenter needs path= to a local folder in "
                         "save_pretrained layout (config.json + model.safetensors) or a "
                         f"Hugging Face hub id such as {EXAMPLE_HUB_ID!r}")
    folder = Path(path).expanduser()
    if folder.is_dir():
        _transformers()
        model, prep = _load_folder(folder, trust_pickle)
    elif _HUB_ID.match(str(path)):
        _transformers()
        model, prep = _load_hub(str(path), trust_pickle, local_files_only)
    else:
        raise FileNotFoundError(f"{str(path)!r} is neither an existing folder nor a hub id "
                                f"('org/name', e.g. {EXAMPLE_HUB_ID!r})")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        prep = dataclasses.replace(prep, size=hw)
    return SegFormerSegmenter(model, prep, device=device, **kwargs)


__all__ = ["DEFAULT_SIZE", "EXAMPLE_HUB_ID", "Preprocessing", "SegFormerSegmenter",
           "load_segmenter"]
