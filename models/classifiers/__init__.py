"""Image classifiers behind one protocol (:class:`Classifier`), loaded by name.

>>> sorted(CLASSIFIERS)[:3]
['alexnet', 'places365-alexnet', 'places365-resnet18']
>>> load_classifier("toyworld-classifier").classes[:2]
['village', 'forest']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..base import check_device
from ..safe_load import load_into, unwrap_state_dict
from .base import Classifier, read_classes
from .published import VGG16, AlexNet, ResNet, read_checkpoint, torchvision_names
from .toyworld import ToyworldClassifier, load_toyworld_classifier


@dataclass(frozen=True)
class _Spec:
    """A published classifier: architecture, class count, what it is and where to get it."""

    arch: str
    num_classes: int
    description: str
    source: str


_TV = "https://download.pytorch.org/models/"
_PLACES = "http://places2.csail.mit.edu/models_places365/"
PUBLISHED: dict[str, _Spec] = {
    "resnet18": _Spec("resnet18", 1000, "ResNet-18, ImageNet (torchvision layout)",
                      f"torchvision's weights, e.g. {_TV}resnet18-f37072fd.pth"),
    "resnet50": _Spec("resnet50", 1000, "ResNet-50, ImageNet (torchvision layout)",
                      f"torchvision's weights, e.g. {_TV}resnet50-0676ba61.pth"),
    "vgg16": _Spec("vgg16", 1000, "VGG-16, ImageNet (torchvision layout)",
                   f"torchvision's weights, e.g. {_TV}vgg16-397923af.pth"),
    "alexnet": _Spec("alexnet", 1000, "AlexNet, ImageNet (torchvision layout)",
                     f"torchvision's weights, e.g. {_TV}alexnet-owt-7be5be79.pth"),
    "places365-resnet18": _Spec("resnet18", 365, "ResNet-18, Places365 (CSAIL release)",
                                f"{_PLACES}resnet18_places365.pth.tar"),
    "places365-resnet50": _Spec("resnet50", 365, "ResNet-50, Places365 (CSAIL release)",
                                f"{_PLACES}resnet50_places365.pth.tar"),
    "places365-vgg16": _Spec("vgg16", 365, "VGG-16, Places365 (PNAS 2020 code's conversion)",
                             "https://dissect.csail.mit.edu/models/vgg16_places365-0bafbc55.pth"),
    "places365-alexnet": _Spec("alexnet", 365, "AlexNet, Places365 (CSAIL release)",
                               f"{_PLACES}alexnet_places365.pth.tar"),
}

#: Every classifier name -> one-line description (for a ``gandissect models``-style listing).
CLASSIFIERS: dict[str, str] = {
    "toyworld-classifier": "small CNN for the 6 Toyworld scene types (64x64, bundled weights)",
    **{name: f"{spec.description}, {spec.num_classes} classes (needs path=)"
       for name, spec in PUBLISHED.items()},
}


def build(arch: str, num_classes: int = 1000,
          classes: Sequence[str] | None = None) -> Classifier:
    """An untrained published architecture (``resnet18``, ``resnet50``, ``vgg16``, ``alexnet``)."""
    if arch in ("resnet18", "resnet50"):
        return ResNet(int(arch[6:]), num_classes, classes)
    if arch == "vgg16":
        return VGG16(num_classes, classes)
    if arch == "alexnet":
        return AlexNet(num_classes, classes)
    raise ValueError(f"unknown architecture {arch!r}; known: resnet18, resnet50, vgg16, alexnet")


def load_classifier(name: str, path: str | Path | None = None, device: str = "cpu",
                    trust_pickle: bool = False,
                    classes: Sequence[str] | str | Path | None = None) -> Classifier:
    """The classifier ``name`` (see :data:`CLASSIFIERS`) in eval mode on ``device``.

    ``toyworld-classifier`` loads its bundled weights (``path``: another file of the same
    architecture). The published names need ``path``: a state dict in torchvision's layout, or
    a Places365 checkpoint (``{"state_dict": ...}``, ``module.`` prefixes; see
    :mod:`models.classifiers.published`); keys, shapes and finiteness are checked and any
    mismatch is reported by name. ``classes``: a list of names or a file with one per line
    (e.g. Places365's ``categories_places365.txt``); by default ``class_0 ..``. Pickles that
    need code are refused unless ``trust_pickle``.
    """
    dev = check_device(device)
    if name == "toyworld-classifier":
        if classes is not None:
            raise ValueError("toyworld-classifier has fixed classes (the Toyworld scene types)")
        return load_toyworld_classifier(path, device=str(dev))
    if name not in PUBLISHED:
        raise ValueError(f"unknown classifier {name!r}; known classifiers: "
                         f"{', '.join(CLASSIFIERS)}")
    spec = PUBLISHED[name]
    if path is None:
        raise ValueError(f"classifier {name!r} has no bundled weights: download {spec.source} "
                         f"and pass path=FILE (CLI: --model {name}:FILE)")
    net = build(spec.arch, spec.num_classes, read_classes(classes, spec.num_classes))
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):  # a whole pickled model (only with trust_pickle)
        obj = obj.state_dict()
    state = torchvision_names(unwrap_state_dict(obj, prefer=("state_dict", "model"),
                                                strip_prefix=""))
    optional = [k for k in net.state_dict() if k.endswith("num_batches_tracked")]
    load_into(net, state, f"{name} ({spec.arch}, {spec.num_classes} classes)", optional,
              path=path, hint=f"{name!r} expects {spec.description} with {spec.num_classes} "
                              f"outputs, e.g. {spec.source}")
    return net.to(dev).eval()


__all__ = ["AlexNet", "CLASSIFIERS", "Classifier", "PUBLISHED", "ResNet", "ToyworldClassifier",
           "VGG16", "build", "load_classifier", "read_classes"]
