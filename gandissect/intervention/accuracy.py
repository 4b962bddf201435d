"""Unit ablation on a classifier's accuracy (Bau et al., PNAS 2020, the Places365 VGG-16
experiment): which few units does each class depend on, and what happens when they are off?

:func:`unit_importance` zeroes each unit of a layer alone (everywhere in the feature map) and
measures, per class, the drop in that class's accuracy on its own images and in its mean logit;
:meth:`UnitImportance.ranking` orders units by accuracy drop (logit drop breaks ties, since
accuracy moves in steps of one image). :func:`ablation_curves` then zeroes a class's top-``k``
units together, for each ``k``, and reports that class's accuracy and the mean accuracy of the
other classes, against ``k`` random units of the same layer (several seeded draws): the paper's
finding is that the class collapses while the others barely move. Rank on one set of images
and measure on another (``ablation_curves`` takes its own images), so the curve is not fitted
to noise. :func:`unit_concepts` ties units to their dissected labels.

Images are what the model takes (a :class:`models.classifiers.base.Classifier` takes float RGB
in [0, 1]); ``labels`` are class indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.hooks import check_feature_map, module_device, resolve_layer
from ..dissection.results import LayerResult
from ..dissection.rotation import layer_units
from .edit import Edit, intervene


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [n, 3, H, W], got "
                         f"{list(getattr(images, 'shape', []))}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")


def _check_labels(labels: torch.Tensor, n: int, classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise ValueError(f"labels must be a tensor [n] of class indices for the {n} "
                         f"images, got {list(getattr(labels, 'shape', []))}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must be class indices in 0..{classes - 1}")


def class_logits(model: nn.Module, images: torch.Tensor, edits: Sequence[Edit] = (),
                 batch_size: int = 64) -> torch.Tensor:
    """``model``'s logits ``[n, K]`` (float32, CPU) on ``images``, with ``edits`` applied."""
    dev, out = module_device(model), []
    with torch.no_grad(), intervene(model, *edits, check=False):
        for s in range(0, images.shape[0], batch_size):
            logits = model(images[s:s + batch_size].to(dev))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ValueError(f"the model returned {list(getattr(logits, 'shape', []))}, "
                                 f"expected logits [n, classes]")
            out.append(logits.float().cpu())
    return torch.cat(out)


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> np.ndarray:
    """``[K]``: the fraction of class ``k``'s images predicted as ``k`` (NaN for a class with
    no image)."""
    right = (logits.argmax(1) == labels).double()
    count = torch.bincount(labels, minlength=classes).double()
    hit = torch.bincount(labels, weights=right, minlength=classes)
    return torch.where(count > 0, hit / count.clamp(min=1), torch.nan).numpy()


def _class_logit(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> np.ndarray:
    """``[K]``: class ``k``'s mean logit on class ``k``'s images."""
    own = logits.gather(1, labels[:, None])[:, 0].double()
    count = torch.bincount(labels, minlength=classes).double()
    return (torch.bincount(labels, weights=own, minlength=classes) / count.clamp(min=1)).numpy()


@dataclass
class UnitImportance:
    """Single-unit ablation of ``layer``: ``drop[k, u]`` is class ``k``'s accuracy on its own
    images minus its accuracy with unit ``u`` zeroed (positive: the class needs the unit);
    ``logit_drop[k, u]`` the same for its mean logit."""

    layer: str
    classes: list[str]
    base_accuracy: np.ndarray          #: [K]
    drop: np.ndarray                   #: [K, U]
    logit_drop: np.ndarray             #: [K, U]
    images: int = 0

    @property
    def units(self) -> int:
        return int(self.drop.shape[1])

    def ranking(self, cls: int | str) -> np.ndarray:
        """Units by importance to class ``cls`` (index or name): accuracy drop, then logit
        drop, then unit index."""
        k = self._index(cls)
        order = np.lexsort((np.arange(self.units), -self.logit_drop[k], -self.drop[k]))
        return order.astype(np.int64)

    def _index(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if cls not in self.classes:
                raise ValueError(f"unknown class {cls!r}; classes: {', '.join(self.classes)}")
            return self.classes.index(cls)
        if not 0 <= int(cls) < len(self.classes):
            raise ValueError(f"class index {cls} out of range 0..{len(self.classes) - 1}")
        return int(cls)


def unit_importance(model: nn.Module, layer: str, images: torch.Tensor, labels: torch.Tensor,
                    classes: Sequence[str] | None = None, batch_size: int = 64,
                    progress: bool = False) -> UnitImportance:
    """Zero each unit of ``layer`` alone (one pass over ``images`` per unit) and measure every
    class's accuracy and mean logit on its own images against the unablated model."""
    model.eval()
    _check_images(images)
    U = layer_units(model, layer, images[:1].to(module_device(model)))
    logits = class_logits(model, images, batch_size=batch_size)
    K = logits.shape[1]
    names = list(classes) if classes is not None else \
        list(getattr(model, "classes", [])) or [f"class_{k}" for k in range(K)]
    if len(names) != K:
        raise ValueError(f"{len(names)} class names for a model with {K} outputs")
    _check_labels(labels, images.shape[0], K)
    labels = labels.long().cpu()
    acc0, logit0 = per_class_accuracy(logits, labels, K), _class_logit(logits, labels, K)
    drop, ldrop = np.zeros((K, U)), np.zeros((K, U))
    units: Any = range(U)
    if progress:
        from tqdm import tqdm
        units = tqdm(units, desc=f"ablate {layer}", unit="unit")
    for u in units:
        out = class_logits(model, images, [Edit(layer, [u])], batch_size)
        drop[:, u] = acc0 - per_class_accuracy(out, labels, K)
        ldrop[:, u] = logit0 - _class_logit(out, labels, K)
    return UnitImportance(layer, names, acc0, drop, ldrop, int(images.shape[0]))


@dataclass
class AblationCurve:
    """One class's accuracy with its top-``k`` units zeroed, for each ``k`` of ``ks``, beside
    the mean accuracy of the other classes, and the same for ``k`` random units (one row per
    draw)."""

    layer: str
    cls: str
    ks: list[int]
    units: list[int]                   #: the class's ranking (top units first, max(ks) of them)
    accuracy: np.ndarray               #: [len(ks)] the class's accuracy, top-k zeroed
    others: np.ndarray                 #: [len(ks)] mean accuracy of the other classes
    random_accuracy: np.ndarray        #: [draws, len(ks)] the class's accuracy, random k zeroed
    random_others: np.ndarray          #: [draws, len(ks)]
    base_accuracy: float = float("nan")
    base_others: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "class": self.cls, "ks": self.ks, "units": self.units,
                "accuracy": self.accuracy.tolist(), "others": self.others.tolist(),
                "random_accuracy": self.random_accuracy.tolist(),
                "random_others": self.random_others.tolist(),
                "base_accuracy": self.base_accuracy, "base_others": self.base_others,
                **self.meta}


def _acc_pair(acc: np.ndarray, k: int) -> tuple[float, float]:
    """Class ``k``'s accuracy and the mean of the others' from per-class accuracies."""
    return float(acc[k]), float(np.nanmean(np.delete(acc, k)))


def _accuracy(model: nn.Module, layer: str, units: Sequence[int], images: torch.Tensor,
              labels: torch.Tensor, K: int, batch_size: int) -> np.ndarray:
    """Per-class accuracy ``[K]`` with ``units`` of ``layer`` zeroed (none: unedited)."""
    edits = [Edit(layer, list(units))] if len(units) else []
    return per_class_accuracy(class_logits(model, images, edits, batch_size), labels, K)


def ablation_curves(model: nn.Module, importance: UnitImportance, images: torch.Tensor,
                    labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    classes: Sequence[int | str] | None = None, draws: int = 5, seed: int = 0,
                    batch_size: int = 64) -> dict[str, AblationCurve]:
    """Per class (default: all), zero its top-``k`` units of ``importance.layer`` (ranked by
    ``importance``, best measured on other images) for each ``k`` and measure on ``images``;
    beside it ``draws`` sets of ``k`` random units (seeded by ``(seed, class, draw)``)."""
    K, U = len(importance.classes), importance.units
    _check_images(images)
    _check_labels(labels, images.shape[0], K)
    labels = labels.long().cpu()
    ks = sorted({int(k) for k in ks if 0 < int(k) <= U})
    if not ks:
        raise ValueError(f"ks must hold unit counts in 1..{U}")
    model.eval()
    layer = importance.layer
    unedited = _accuracy(model, layer, [], images, labels, K, batch_size)   # once, for all
    out: dict[str, AblationCurve] = {}
    for cls in classes if classes is not None else range(K):
        k = importance._index(cls)
        rank = importance.ranking(k)[:max(ks)].tolist()
        base = _acc_pair(unedited, k)
        top = [_acc_pair(_accuracy(model, layer, rank[:n], images, labels, K, batch_size), k)
               for n in ks]
        rnd = np.zeros((draws, len(ks), 2))
        for d in range(draws):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, k, d])))
            perm = rng.permutation(U).tolist()
            for j, n in enumerate(ks):
                rnd[d, j] = _acc_pair(_accuracy(model, layer, perm[:n], images, labels, K,
                                                batch_size), k)
        name = importance.classes[k]
        out[name] = AblationCurve(importance.layer, name, ks, rank,
                                  np.array([a for a, _ in top]), np.array([o for _, o in top]),
                                  rnd[:, :, 0], rnd[:, :, 1], base[0], base[1],
                                  {"draws": draws, "seed": seed, "images": int(images.shape[0])})
    return out


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a plot is drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out, save it to ``path`` (PNG, folders made) and close it."""
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    _pyplot().close(fig)
    return p


def unit_concepts(result: LayerResult, units: Sequence[int]) -> list[dict[str, Any]]:
    """Each of ``units`` with its dissected label, category, IoU and whether it is
    interpretable (above the run's IoU threshold)."""
    labels, cats = result.unit_labels, result.unit_categories
    best, inter = result.best_iou, result.interpretable
    out = []
    for u in units:
        if not 0 <= int(u) < result.units:
            raise ValueError(f"unit {u} is not in layer {result.layer!r} ({result.units} units)")
        out.append({"unit": int(u), "label": labels[u], "category": cats[u],
                    "iou": float(best[u]), "interpretable": bool(inter[u])})
    return out


def plot_ablation_curves(curves: dict[str, AblationCurve], path: str | Path,
                         title: str = "") -> Path:
    """One panel per class: its accuracy (solid) and the other classes' mean (dashed) against
    the number of units zeroed, top-ranked units against random units (mean of the draws,
    shaded min..max). Saved to ``path`` (PNG)."""
    plt = _pyplot()
    n = len(curves)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items(), strict=False):
        x = [0, *c.ks]
        ax.plot(x, [c.base_accuracy, *c.accuracy], "o-", color="C3", label=f"{name}: top units")
        ax.plot(x, [c.base_others, *c.others], "o--", color="C3", alpha=0.6,
                label="other classes: top units")
        ra, ro = c.random_accuracy, c.random_others
        ax.plot(x, [c.base_accuracy, *ra.mean(0)], "s-", color="C0", label=f"{name}: random")
        ax.fill_between(c.ks, ra.min(0), ra.max(0), color="C0", alpha=0.15)
        ax.plot(x, [c.base_others, *ro.mean(0)], "s--", color="C0", alpha=0.6,
                label="other classes: random")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name)
        ax.set_xlabel(f"units zeroed in {c.layer}")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@dataclass
class Explanation:
    """Why ``model`` predicted ``cls`` for one image: the units of ``layer`` with the largest
    gradient × activation for that class's logit (for a global-average-pooled linear head this
    is exactly the unit's weight times its mean activation), with their dissected labels and
    the region where each exceeds its dissection threshold (upsampled to the image)."""

    layer: str
    cls: str
    probability: float
    units: list[int]
    contributions: list[float]
    labels: list[str]
    ious: list[float]
    interpretable: list[bool]
    masks: np.ndarray                  #: [top, H, W] bool (empty without a dissection)


def explain_prediction(model: nn.Module, layer: str, image: torch.Tensor,
                       result: LayerResult | None = None, top: int = 5,
                       cls: int | None = None, classes: Sequence[str] | None = None
                       ) -> Explanation:
    """Explain ``model``'s prediction (or class ``cls``) on ``image`` ``[3, H, W]`` by the
    ``top`` units of ``layer`` contributing most to that class's logit (gradient × activation,
    summed over the map). With ``result`` (a dissection of ``layer``) each unit gets its label
    and its region (activation upsampled bilinearly to the image, above the unit's threshold).
    The model's weights and their gradients are left untouched."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"image must be a tensor [3, H, W], got "
                         f"{list(getattr(image, 'shape', []))}")
    captured: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        a = check_feature_map(layer, output).detach().requires_grad_(True)
        captured["a"] = a
        return a
    model.eval()
    handle = resolve_layer(model, layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(image[None].to(module_device(model)))
            k = int(logits.argmax(1)) if cls is None else int(cls)
            if not 0 <= k < logits.shape[1]:
                raise ValueError(f"class {cls} out of range 0..{logits.shape[1] - 1}")
            (grad,) = torch.autograd.grad(logits[0, k], captured["a"])
    finally:
        handle.remove()
    a = captured["a"].detach()
    contrib = (grad * a).sum((2, 3))[0].cpu()
    order = torch.argsort(contrib, descending=True, stable=True)[:top].tolist()
    names = list(classes) if classes is not None else list(getattr(model, "classes", [])) or \
        [f"class_{i}" for i in range(logits.shape[1])]
    prob = float(torch.softmax(logits.detach().float(), 1)[0, k])
    labels, ious, inter, masks = [], [], [], []
    if result is not None:
        if result.units != a.shape[1]:
            raise ValueError(f"the dissection has {result.units} units, layer {layer!r} "
                             f"{a.shape[1]}: is it a dissection of this model and layer?")
        up = F.interpolate(a[:, order].float(), size=tuple(image.shape[1:]), mode="bilinear",
                           align_corners=False)[0]
        for j, u in enumerate(order):
            labels.append(result.unit_labels[u])
            ious.append(float(result.best_iou[u]))
            inter.append(bool(result.interpretable[u]))
            masks.append((up[j].double() > result.unit_threshold(u)).cpu().numpy())
    return Explanation(layer, names[k], prob, order, [float(contrib[u]) for u in order], labels,
                       ious, inter, np.array(masks, dtype=bool).reshape(len(masks),
                                                                        *image.shape[1:]))


def plot_explanation(image: torch.Tensor, exp: Explanation, path: str | Path) -> Path:
    """The image, then one panel per unit with its region outlined over the image, its label,
    IoU and contribution. ``image`` is float RGB in [0, 1], ``[3, H, W]``."""
    plt = _pyplot()
    rgb = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    n = 1 + len(exp.units)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
    axes[0, 0].imshow(rgb, interpolation="nearest")
    axes[0, 0].set_title(f"{exp.cls} ({exp.probability:.0%})", fontsize=8)
    for j, u in enumerate(exp.units):
        ax = axes[0, j + 1]
        ax.imshow(rgb * (0.35 + 0.65 * exp.masks[j][..., None]) if len(exp.masks) else rgb,
                  interpolation="nearest")
        label = (f"{exp.labels[j]} ({exp.ious[j]:.2f})" if exp.labels else "")
        ax.set_title(f"unit {u} {label}\ncontrib {exp.contributions[j]:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return _save(fig, path)
