"""The model zoo as data, and a verified, cached, atomic download of its weights.

Each :class:`ZooEntry` names an architecture family, resolution, URL, expected SHA-256 (a full
digest or a published prefix, see :func:`download`), licence note and layer names.
:func:`resolve_weights` turns a zoo name or a local path into a local file;
:func:`load_zoo_model` builds the matching :class:`~models.base.Generator` from it.

Nothing here touches the network unless a zoo name whose file is not cached is resolved.
The cache folder is ``$GANDISSECT_CACHE`` or ``~/.cache/gandissect``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import Generator
from .safe_load import CheckpointError, load_checkpoint

_PROGAN_URL = "http://gandissect.csail.mit.edu/models/"
_STYLEGAN2_URL = "http://rewriting.csail.mit.edu/data/models/"
_PROGAN_LICENCE = ("ProGAN (Karras et al. 2018) trained by NVIDIA, converted to PyTorch by the "
                   "GAN Dissection authors; NVIDIA released the original weights under "
                   "CC BY-NC 4.0 (non-commercial). Check upstream terms before use.")
_STYLEGAN2_LICENCE = ("StyleGAN2 (Karras et al. 2020) in rosinality/stylegan2-pytorch layout, "
                      "posted by the 'Rewriting a Deep Generative Model' authors; NVIDIA's "
                      "StyleGAN2 weights are under the NVIDIA Source Code License-NC "
                      "(non-commercial). Check upstream terms before use.")
_BIGGAN_URL = "https://s3.amazonaws.com/models.huggingface.co/biggan/"
_BIGGAN_LICENCE = ("BigGAN-deep (Brock et al. 2019) from DeepMind's TF Hub modules (Apache 2.0), "
                   "converted by huggingface/pytorch-pretrained-BigGAN (MIT). Check upstream "
                   "terms before use.")


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable generator. ``sha256`` is a full hex digest or a prefix of at least 8
    hex digits (the torch.hub ``name-<prefix>.ext`` convention), or None when unknown."""

    name: str
    family: str
    resolution: int
    url: str
    sha256: str | None
    licence: str
    layers: tuple[str, ...]
    description: str = ""
    #: Cache file name when the URL's own name is unsuitable (e.g. a generic ``.bin``).
    cache_name: str | None = None

    @property
    def filename(self) -> str:
        """The file name the weights are cached under."""
        return self.cache_name or Path(urllib.parse.urlparse(self.url).path).name


def progan_layers(resolution: int) -> tuple[str, ...]:
    """``layer1 .. layerN`` of a ProGAN at ``resolution`` (two conv layers per octave from 4x4)."""
    n = 2 * (int(resolution).bit_length() - 1 - 1)
    return tuple(f"layer{i}" for i in range(1, n + 1))


def stylegan2_layers(resolution: int) -> tuple[str, ...]:
    """``conv1, convs.0 .. convs.K`` of a rosinality StyleGAN2 at ``resolution``."""
    n = 2 * (int(resolution).bit_length() - 1 - 2)
    return ("conv1",) + tuple(f"convs.{i}" for i in range(n))


def _progan(domain: str, file: str, resolution: int = 256) -> ZooEntry:
    return ZooEntry(f"progan-{domain}", "progan", resolution, _PROGAN_URL + file,
                    file.rsplit("-", 1)[1].split(".")[0], _PROGAN_LICENCE,
                    progan_layers(resolution),
                    f"ProGAN {domain} ({'CelebA-HQ' if domain == 'celebhq' else 'LSUN'}), "
                    "GAN Dissection checkpoint")


def _stylegan2(domain: str, file: str, resolution: int = 256) -> ZooEntry:
    return ZooEntry(f"stylegan2-{domain}", "stylegan2", resolution, _STYLEGAN2_URL + file,
                    file.rsplit("-", 1)[1].split(".")[0], _STYLEGAN2_LICENCE,
                    stylegan2_layers(resolution), f"StyleGAN2 config-f {domain}, g_ema")


def _biggan(resolution: int) -> ZooEntry:
    from .biggan import biggan_layers

    name = f"biggan-deep-{resolution}"
    return ZooEntry(name, "biggan", resolution, f"{_BIGGAN_URL}{name}-pytorch_model.bin", None,
                    _BIGGAN_LICENCE, biggan_layers(resolution),
                    "BigGAN-deep ImageNet (1000 classes), pytorch-pretrained-biggan checkpoint",
                    cache_name=f"{name}-pytorch_model.pth")


#: The known downloadable generators, by name.
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    _progan("bedroom", "proggan_bedroom-d8a89ff1.pth"),
    _progan("church", "proggan_churchoutdoor-7e701dd5.pth"),
    _progan("conferenceroom", "proggan_conferenceroom-21e85882.pth"),
    _progan("diningroom", "proggan_diningroom-3aa0ab80.pth"),
    _progan("kitchen", "proggan_kitchen-67f1e16c.pth"),
    _progan("livingroom", "proggan_livingroom-5ef336dd.pth"),
    _progan("restaurant", "proggan_restaurant-b8578299.pth"),
    _progan("celebhq", "proggan_celebhq-620d161c.pth", 1024),
    _stylegan2("bedroom", "stylegan2_bedroom-6fa55a6e.pt"),
    _stylegan2("car", "stylegan2_car-3659b4b6.pt", 512),
    _stylegan2("cat", "stylegan2_cat-d8dc98b2.pt"),
    _stylegan2("church", "stylegan2_church-e8ca9fd0.pt"),
    _stylegan2("faces", "stylegan2_faces-2858cc2e.pt", 1024),
    _stylegan2("horse", "stylegan2_horse-499b5380.pt"),
    _stylegan2("kitchen", "stylegan2_kitchen-b3a526e9.pt"),
    _stylegan2("places", "stylegan2_places-a3b72d71.pt"),
    _biggan(128),
    _biggan(256),
    _biggan(512),
]}


def default_cache_dir() -> Path:
    """``$GANDISSECT_CACHE`` if set, else ``~/.cache/gandissect``."""
    env = os.environ.get("GANDISSECT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gandissect"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_expected(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    s = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", s):
        raise ValueError(f"sha256 must be 8 to 64 hex digits (a digest or its prefix), got "
                         f"{sha256!r}")
    return s


class DownloadError(CheckpointError):
    """A download failed, was cut short, or did not match its expected hash."""


def download(url: str, cache_dir: str | Path | None = None, sha256: str | None = None,
             progress: bool = True, *, filename: str | None = None,
             timeout: float = 60.0) -> Path:
    """The local copy of ``url`` in ``cache_dir``, downloading it first if needed.

    The data is streamed to a temporary file in ``cache_dir``, hashed on the way, checked
    against the server's Content-Length and against ``sha256`` (a full digest or a prefix of
    at least 8 hex digits; None skips the check), and only then renamed into place atomically:
    a failed, interrupted or mismatched download leaves no file under the final name (and no
    temporary file). An already cached file is re-hashed and returned. ``progress`` draws a
    tqdm bar on stderr. Only ``http``/``https``/``file`` URLs are accepted.
    """
    expected = _check_expected(sha256)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; use http(s) or file")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name or name in (".", ".."):
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    target = cache / name
    if target.is_file():
        if expected is not None:
            digest = sha256_file(target)
            if not digest.startswith(expected):
                raise DownloadError(
                    f"cached file {str(target)!r} has sha256 {digest}, expected "
                    f"{expected}...; delete it to download it again")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, total = _stream(url, out, timeout, progress, name)
        if total is not None and size != total:
            raise DownloadError(f"download of {url} was cut short: got {size} of {total} bytes")
        if expected is not None and not digest.startswith(expected):
            raise DownloadError(f"download of {url} has sha256 {digest}, expected {expected}...; "
                                "the file is corrupt or changed upstream; nothing was cached")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _stream(url: str, out: Any, timeout: float, progress: bool,
            name: str) -> tuple[str, int, int | None]:
    """Copy ``url`` into ``out``; return (sha256 hex, bytes read, Content-Length or None)."""
    from tqdm import tqdm

    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                      disable=not progress, file=sys.stderr, leave=True) as bar:
                while block := resp.read(1 << 16):
                    out.write(block)
                    h.update(block)
                    size += len(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, IncompleteRead
        raise DownloadError(f"download of {url} failed after {size} bytes: {exc}") from exc
    return h.hexdigest(), size, total


def resolve_weights(name_or_path: str | Path, cache_dir: str | Path | None = None,
                    progress: bool = True) -> Path:
    """A local weights file: ``name_or_path`` itself if it is an existing file, else the
    cached (downloaded on first use, verified) file of the zoo entry of that name."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    key = str(name_or_path)
    if key in ZOO:
        entry = ZOO[key]
        return download(entry.url, cache_dir, entry.sha256, progress, filename=entry.filename)
    raise FileNotFoundError(f"{key!r} is neither an existing file nor a zoo model; zoo models: "
                            f"{', '.join(sorted(ZOO))}")


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether the zoo entry ``name``'s file is already in the cache (not re-hashed)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (cache / ZOO[name].filename).is_file()


def _builders() -> dict[str, Callable[..., Generator]]:
    from .biggan import from_state_dict as biggan_from_state_dict
    from .progan import from_state_dict as progan_from_state_dict
    from .stylegan2 import from_state_dict as stylegan2_from_state_dict

    return {"progan": progan_from_state_dict, "stylegan2": stylegan2_from_state_dict,
            "biggan": biggan_from_state_dict}


#: Architecture families that :func:`load_zoo_model` can build from a local file.
FAMILIES: tuple[str, ...] = ("progan", "stylegan2", "biggan")


def load_zoo_model(name: str, device: str | torch.device = "cpu",
                   cache_dir: str | Path | None = None, path: str | Path | None = None,
                   trust_pickle: bool = False, progress: bool = True,
                   **kwargs: Any) -> Generator:
    """A zoo generator in eval mode on ``device``.

    ``name`` is a zoo name (weights from ``path`` if given, else downloaded/cached) or a family
    name (``"progan"``, ``"stylegan2"``) with ``path`` to a local checkpoint in that family's
    layout. ``kwargs`` go to the family's ``from_state_dict`` (e.g. ``truncation`` for
    StyleGAN2). A zoo model whose checkpoint has other layers than the entry says is an error.
    """
    entry = ZOO.get(name)
    if entry is not None:
        family = entry.family
    elif name in FAMILIES:
        if path is None:
            raise ValueError(f"family {name!r} needs path= to a local checkpoint; or use a zoo "
                             f"name: {', '.join(sorted(ZOO))}")
        family = name
    else:
        raise ValueError(f"unknown zoo model {name!r}; zoo models: {', '.join(sorted(ZOO))}; "
                         f"families (with path=): {', '.join(FAMILIES)}")
    weights = resolve_weights(path if path is not None else name, cache_dir, progress)
    obj = load_checkpoint(weights, trust_pickle=trust_pickle)
    try:
        gen = _builders()[family](obj, **kwargs)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(weights)!r}: {exc}") from None
    if entry is not None and tuple(gen.layer_names) != entry.layers:
        raise CheckpointError(f"{str(weights)!r} builds a {family} with layers "
                              f"{gen.layer_names[0]}..{gen.layer_names[-1]} at "
                              f"{gen.resolution}px, but zoo model {name!r} is "
                              f"{entry.resolution}px with {entry.layers[0]}..{entry.layers[-1]}")
    return gen.to(device).eval()


__all__ = ["FAMILIES", "ZOO", "DownloadError", "ZooEntry", "default_cache_dir", "download",
           "is_cached", "load_zoo_model", "progan_layers", "resolve_weights", "sha256_file",
           "stylegan2_layers"]
