"""Streaming statistics: exact against brute force, bounded error, merge == one pass."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gandissect.dissection.quantile import UnitHistogram
from gandissect.dissection.stats import ConceptHistogram, ThresholdCounts, TopK, encode_rows
from gandissect.dissection.upsample import Upsampler

torch.set_num_threads(1)


def data(seed: int = 0, units: int = 4, n: int = 20000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(units, n, generator=g)
    x[1] = x[1].exp() * 5          # heavy tail
    x[2] = x[2].clamp(min=0)       # an atom at 0 (ReLU)
    x[3] = x[3] * 1e-3 + 1000.0    # narrow range far from 0
    return x


def fill(h: UnitHistogram, x: torch.Tensor, chunks: int) -> UnitHistogram:
    for part in x.chunk(chunks, 1):
        h.extend_range(part.min(1).values, part.max(1).values)
        h.add_dense(part)
    return h


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.99, 0.999])
def test_quantile_bracket_and_rank_error_bound(p: float) -> None:
    x = data()
    h = fill(UnitHistogram(4, 256), x, 7)
    lo, hi, mass = h.quantile(p)
    xd = x.double()
    target = (1 - p) * x.shape[1]
    above_lo = (xd > lo[:, None]).sum(1).double()
    above_hi = (xd > hi[:, None]).sum(1).double()
    assert torch.all(above_lo >= target) and torch.all(above_hi < target)   # bracket holds
    assert torch.equal(above_lo - above_hi, mass.double())                         # mass is exact
    # the exact quantile: the smallest value with fewer than `target` values above it
    kth = xd.topk(math.ceil(target), dim=1).values[:, -1]
    assert torch.all((lo < kth) & (kth <= hi))
    assert torch.all(hi - lo == h.width())
    # the bound: counts above any edge are exact, so the rank error of `lo` is <= mass
    assert torch.all(above_lo - target <= mass)


def test_histogram_counts_above_edges_are_exact() -> None:
    x = data(1)
    h = fill(UnitHistogram(4, 64), x, 3)
    edges = h.edges()
    brute = (x.double()[:, None, :] > edges[:, :, None]).sum(2)
    assert torch.equal(h.count_above_edges(), brute)


def test_histogram_merge_equals_one_pass_and_state_roundtrip() -> None:
    x = data(2)
    one = fill(UnitHistogram(4, 128), x, 5)
    parts = x.chunk(3, 1)
    a = fill(UnitHistogram(4, 128), parts[2], 2)           # different order and range growth
    b = fill(UnitHistogram(4, 128), torch.cat(parts[:2], 1), 4)
    a.merge(b)
    for k, v in one.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
    c = UnitHistogram(4, 128)
    c.load_state_dict(one.state_dict())
    assert torch.equal(c.quantile(0.99)[0], one.quantile(0.99)[0])
    empty = UnitHistogram(4, 128)
    empty.merge(one)
    assert torch.equal(empty.counts, one.counts)


def test_histogram_rejects_values_outside_range() -> None:
    h = UnitHistogram(1, 16)
    h.extend_range(torch.tensor([0.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="extend_range"):
        h.add(torch.tensor([1e6]), torch.tensor([0]))


def test_topk_merge_equals_one_pass() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (40, 3), generator=g).float()       # many ties
    one = TopK(3, k=6)
    for s in range(0, 40, 7):
        one.add(scores[s:s + 7], torch.arange(s, min(s + 7, 40)))
    a, b = TopK(3, k=6), TopK(3, k=6)
    a.add(scores[20:], torch.arange(20, 40))
    b.add(scores[:20], torch.arange(20))
    a.merge(b)
    assert torch.equal(a.indices, one.indices) and torch.equal(a.values, one.values)
    ref = torch.stack([torch.tensor(sorted(range(40), key=lambda i: (-scores[i, u], i))[:6])
                       for u in range(3)])
    assert torch.equal(one.indices, ref)


def random_batch(seed: int, n: int = 6, units: int = 3, concepts: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, units, 50, generator=g)
    masks = torch.rand(n, concepts, 50, generator=g) < 0.3
    present = masks.any(2)[:, :2]                                  # two categories
    return values, masks, present


def threshold_counts() -> ThresholdCounts:
    # bracket (lo_index * 2**e, (lo_index + 1) * 2**e] = (0.5, 1.0] for e = -1
    return ThresholdCounts(torch.tensor([1, 1, 0]), torch.tensor([-1, -1, 0]), 4, 2, fine_log2=3)


def add_batch(tc: ThresholdCounts, values: torch.Tensor, masks: torch.Tensor,
              present: torch.Tensor) -> None:
    n, u, p = values.shape
    sample = torch.arange(n)[:, None, None].expand(n, u, p).reshape(-1)
    unit = torch.arange(u)[None, :, None].expand(n, u, p).reshape(-1)
    pix = torch.arange(p)[None, None, :].expand(n, u, p).reshape(-1)
    rows = masks.permute(0, 2, 1)[sample, pix]
    tc.add(values.reshape(-1), unit, rows, present[sample])
    tc.add_masks(masks, present)


def test_threshold_counts_exact_and_mergeable() -> None:
    batches = [random_batch(s) for s in range(4)]
    one = threshold_counts()
    for b in batches:
        add_batch(one, *b)
    a, b2 = threshold_counts(), threshold_counts()
    for i, b in enumerate(batches):
        add_batch(a if i % 2 else b2, *b)
    a.merge(b2)
    for k, v in one.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
    values = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches])
    present = torch.cat([b[2] for b in batches])
    edges = one.fine_edges()
    for j in range(edges.shape[1]):
        at = one.counts_at(torch.full((3,), j))
        for u in range(3):
            on = values[:, u].double() > edges[u, j]
            assert at["above"][u] == on.sum()
            assert torch.equal(at["intersection"][u], (on[:, None] & masks).sum((0, 2)))
            assert torch.equal(at["above_category"][u], (on.sum(1)[:, None] * present).sum(0))
    assert one.concept_pixels.dtype == torch.int64
    with pytest.raises(ValueError, match="differs"):
        a.merge(ThresholdCounts(torch.tensor([2, 1, 0]), torch.tensor([-1, -1, 0]), 4, 2, 3))


def test_concept_histogram_exact_and_mergeable() -> None:
    batches = [random_batch(s) for s in range(3)]
    h = UnitHistogram(3, 32)
    h.extend_range(torch.full((3,), -6.0), torch.full((3,), 6.0))

    def new() -> ConceptHistogram:
        return ConceptHistogram(h.e, h.m, 32, 4, 2)
    one, a, b = new(), new(), new()
    for i, (v, m, p) in enumerate(batches):
        one.add(v, m, p, chunk=64)
        (a if i % 2 else b).add(v, m, p)
    a.merge(b)
    for k, val in one.state_dict().items():
        assert torch.equal(a.state_dict()[k], val), k
    values = torch.cat([x[0] for x in batches]).double()
    masks = torch.cat([x[1] for x in batches])
    edges = one.edges()
    inter = (values[:, :, None, :] > edges[None, :, :, None])            # [n, U, B+1, P]
    inter_c = (inter[:, :, :, None, :] & masks[:, None, None]).sum((0, 4))
    suffix = one.concept.flip(1).cumsum(1).flip(1)
    assert torch.equal(suffix, inter_c[:, :-1])


def test_upsampler_dense_sparse_identical_and_cover_all_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    for h, w, H, W in [(8, 8, 64, 64), (5, 7, 33, 20), (16, 16, 8, 8)]:
        a = torch.randn(2, 3, h, w, generator=g)
        up = Upsampler((h, w), (H, W))
        dense = up.dense(a)
        ref = F.interpolate(a, size=(H, W), mode="bilinear", align_corners=False)
        assert (dense - ref).abs().max() < 1e-5
        vals, n, u, pix = up.sparse(a, torch.ones(2, 3, h, w, dtype=torch.bool), max_quads=5)
        assert vals.numel() == 2 * 3 * H * W
        key = (n * 3 + u) * H * W + pix
        assert torch.equal(key.sort().values, torch.arange(2 * 3 * H * W))
        assert torch.equal(dense.flatten(2)[n, u, pix], vals)           # bit-identical
        qmax = up.quad_max(a)
        quad_r = up.r0[pix // W]
        quad_c = up.c0[pix % W]
        bound = qmax[n, u, quad_r, quad_c]
        assert torch.all(vals <= bound + bound.abs() * 1e-6 + 1e-30)


@pytest.mark.parametrize("shape", [(8, 8, 64, 64), (3, 5, 40, 41), (5, 3, 33, 20),
                                   (5, 7, 33, 20), (16, 16, 8, 8), (4, 4, 4, 4),
                                   (16, 16, 64, 64), (32, 32, 64, 64), (64, 64, 64, 64)])
def test_iter_above_is_exactly_the_dense_values_above_the_cut(
        shape: tuple[int, int, int, int]) -> None:
    h, w, H, W = shape
    g = torch.Generator().manual_seed(h * 100 + W)
    a = torch.randn(5, 6, h, w, generator=g)
    a[:, 1] = a[:, 1].clamp(min=0)                          # ReLU-like: many exact zeros
    a[:, 2] = torch.round(a[:, 2] * 2) / 2                  # plateaus: ties at the cut
    a[:, 3] *= 1e-30                                        # tiny values
    up = Upsampler((h, w), (H, W))
    dense = up.dense(a)
    flat = dense.transpose(0, 1).reshape(6, -1)
    cuts = [torch.quantile(flat.double(), 0.97, dim=1),      # an interior cut
            torch.tensor([0.0, 0.0, 0.5, 0.0, -0.25, 1.0], dtype=torch.float64),
            torch.tensor([-float("inf"), float("inf"), 0.0, 1e-31, -1e-31, flat[5].max()],
                         dtype=torch.float64)]
    for cut in cuts:
        for chunk in [1 << 20, 97]:                              # one chunk, many chunks
            vals, units, pos = [], [], []
            for v, u, p in up.iter_above(a, cut, chunk=chunk):
                assert p is not None
                vals.append(v)
                units.append(u)
                pos.append(p)
            v, u, p = torch.cat(vals), torch.cat(units), torch.cat(pos)
            ref = dense.double() > cut[None, :, None, None]
            n_ref, u_ref, i_ref, j_ref = ref.nonzero().unbind(1)
            key = (u * 5 * H * W + p).sort()
            key_ref = (u_ref * 5 * H * W + n_ref * H * W + i_ref * W + j_ref).sort()
            assert torch.equal(key.values, key_ref.values)
            assert torch.equal(v[key.indices], dense[n_ref, u_ref, i_ref, j_ref][key_ref.indices])
            assert torch.equal(u, u.clamp(0, 5)) and p.max() < 5 * H * W


def test_add_coded_equals_per_pixel_rows_and_codes_roundtrip() -> None:
    batches = [random_batch(s, n=5, units=3, concepts=4) for s in range(3)]
    rows, coded = threshold_counts(), threshold_counts()
    grouped = threshold_counts()
    for values, masks, present in batches:
        add_batch(rows, values, masks, present)
        enc = encode_rows(masks, present)
        assert enc is not None
        codes, concepts, categories = enc
        assert torch.equal(concepts[codes].permute(0, 2, 1), masks)      # codes decode exactly
        assert torch.equal(categories[codes], present[:, None].expand(-1, 50, -1))
        n, u, p = values.shape
        unit = torch.arange(u)[None, :, None].expand(n, u, p).reshape(-1)
        code = codes[:, None, :].expand(n, u, p).reshape(-1)
        for tc, max_bins in [(coded, 1 << 23), (grouped, 30)]:        # 30: one code at a time
            tc.add_coded(values.reshape(-1), unit, code, concepts, categories, max_bins)
            tc.add_masks(masks, present)
    for k, v in rows.state_dict().items():
        assert torch.equal(coded.state_dict()[k], v), k
        assert torch.equal(grouped.state_dict()[k], v), k


def test_encode_rows_wide_tables_use_unique() -> None:
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(3, 18, 40, generator=g) < 0.2          # 18 concepts + 4 categories > 20
    present = torch.rand(3, 4, generator=g) < 0.5
    enc = encode_rows(masks, present)
    assert enc is not None
    codes, concepts, categories = enc
    assert torch.equal(concepts[codes].permute(0, 2, 1), masks)
    assert torch.equal(categories[codes][:, 0], present)
    assert encode_rows(torch.zeros(1, 60, 4, dtype=torch.bool),
                       torch.zeros(1, 3, dtype=torch.bool)) is None
