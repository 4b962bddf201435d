"""Trace: capture, edit, early stop, hook removal, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gandissect.common.hooks import Trace, run_to_layers


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(1, 3, 1)
        self.c2 = nn.Conv2d(3, 2, 1)
        self.flat = nn.Flatten()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.flat(self.c2(self.c1(x)))


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks for m in net.modules())


def test_capture_matches_manual_forward() -> None:
    net, x = Net(), torch.randn(2, 1, 3, 3)
    with Trace(net, ["c1", "c2"]) as tr:
        out = net(x)
    assert torch.equal(tr["c1"], net.c1(x))
    assert torch.equal(tr["c2"], net.c2(net.c1(x)))
    assert torch.equal(out, net.c2(net.c1(x)).flatten(1))
    assert no_hooks(net)


def test_edit_changes_output_and_record() -> None:
    net, x = Net(), torch.randn(2, 1, 3, 3)
    with Trace(net, "c1", edit=lambda name, a: torch.zeros_like(a)) as tr:
        out = net(x)
    assert torch.equal(tr["c1"], torch.zeros(2, 3, 3, 3))
    expected = net.c2(torch.zeros(2, 3, 3, 3)).flatten(1)
    assert torch.allclose(out, expected)
    assert no_hooks(net)


def test_stop_skips_later_layers() -> None:
    net, x = Net(), torch.randn(1, 1, 3, 3)
    ran: list[str] = []
    net.c2.register_forward_pre_hook(lambda m, i: ran.append("c2"))
    with Trace(net, ["c1"], stop=True) as tr:
        net(x)
        raise AssertionError("unreachable: the forward pass stops")  # pragma: no cover
    assert ran == [] and tuple(tr["c1"].shape) == (1, 3, 3, 3)
    assert not net.c1._forward_hooks
    outs = run_to_layers(net, ["c1"], x)
    assert torch.equal(outs["c1"], net.c1(x))


def test_hooks_removed_when_forward_raises() -> None:
    net = Net()
    with pytest.raises(RuntimeError):
        with Trace(net, ["c1", "c2"]):
            net(torch.randn(1, 2, 3, 3))      # wrong channel count
    assert no_hooks(net)
    with pytest.raises(ValueError, match="boom"):
        with Trace(net, ["c1"], edit=lambda n, a: (_ for _ in ()).throw(ValueError("boom"))):
            net(torch.randn(1, 1, 3, 3))
    assert no_hooks(net)


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid layers: c1, c2, flat"):
        Trace(Net(), ["c3"])


def test_generator_layer_names_used() -> None:
    from tiny import TinyGenerator
    with pytest.raises(ValueError, match="valid layers: a, b"):
        Trace(TinyGenerator(), ["fc"])


def test_non_feature_map_output_is_clear_error() -> None:
    net = Net()
    with pytest.raises(ValueError, match=r"layer 'flat' output has shape \[1, 18\]"):
        with Trace(net, ["flat"]):
            net(torch.randn(1, 1, 3, 3))
    assert no_hooks(net)
    with Trace(net, ["flat"], check_shape=False) as tr:
        net(torch.randn(1, 1, 3, 3))
    assert tuple(tr["flat"].shape) == (1, 18)


def test_missing_record_message() -> None:
    with Trace(Net(), ["c1"]) as tr:
        pass
    with pytest.raises(KeyError, match="did the forward pass run"):
        tr["c1"]
