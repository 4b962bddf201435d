"""Weights fingerprints: equal weights give equal keys, any change to a weight changes them."""

import torch

import models
import segmenters
from gandissect.common.fingerprint import fingerprint


def test_fingerprint_tracks_weights_of_modules_and_wrappers() -> None:
    a, b = models.load("toyworld"), models.load("toyworld")
    seg = segmenters.load("toyworld")  # a wrapper holding its network as an attribute
    assert fingerprint(a, seg) == fingerprint(b, seg)
    assert len(fingerprint(a)) == 12
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert fingerprint(a) != fingerprint(b)
    seg2 = segmenters.load("toyworld")
    with torch.no_grad():
        next(p for m in vars(seg2).values() if isinstance(m, torch.nn.Module)
             for p in m.parameters()).add_(1e-3)
    assert fingerprint(seg) != fingerprint(seg2)
    # no weights: the class decides
    assert fingerprint(segmenters.load("color")) == fingerprint(segmenters.load("color"))
    assert fingerprint(segmenters.load("color")) != fingerprint(segmenters.load("planted"))
