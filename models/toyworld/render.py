"""Toyworld: a procedural world of outdoor scenes whose renderer knows every pixel's label.

A scene is drawn back to front (sky, sun, clouds, mountains, ground, water, road, then houses and
trees from far to near) into a map of primitive ids with OpenCV, without anti-aliasing, so the
label of every pixel is exactly the top-most primitive painted there. Colours come from the
primitives, then texture (gradients, blotches, ripples) and a little noise are added on top;
texture never changes labels.

Scene ``i`` of seed ``s`` depends only on ``(s, i)``: its random stream is
``numpy.random.SeedSequence([s, i])``, whatever batch it is rendered in.

Scene types (opt-in, for scene classification): ``render_scene(s, i, scene_type="forest")`` draws
from a prior that favours that type's content and keeps redrawing (from the same stream) until
the scene *is* of that type by :func:`scene_type_of`, with a margin. The rule reads only the
rendered leaf map: each type but ``open_field`` has a defining concept and a threshold on the
fraction of the image it covers (:data:`SCENE_RULES`); a scene's type is the defining concept with
the largest fraction/threshold ratio when that ratio is >= 1, else ``open_field``. Typed scenes
also keep every other ratio <= :data:`SCENE_MARGIN`, so no typed scene sits near a boundary.
Without ``scene_type`` the renderer draws exactly what it always drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .concepts import LEAF_ID, LEAVES, PART_OF, leaves_to_masks

_MAX_PRIMITIVES = 255
#: ``sub(kind, k)``: the random stream of the ``k``-th object of ``kind`` (latent renderer only;
#: the seeded renderer draws everything from one stream).
_Substreams = Callable[[str, int], np.random.Generator]


@dataclass(frozen=True)
class _Prior:
    """What a scene may contain. ``(lo, hi)`` pairs are uniform ranges (``integers`` ranges for
    counts: ``hi`` excluded); ``houses[k]`` is the probability of ``k`` houses. The defaults are
    the untyped renderer's own values, drawn in the same order (so output is unchanged)."""

    horizon: tuple[float, float] = (0.35, 0.6)
    mountains: tuple[int, int] = (0, 4)
    mountain_height: tuple[float, float] = (0.10, 0.32)
    mountain_width: tuple[float, float] = (0.35, 0.8)
    water_p: float = 0.45
    lake_p: float = 0.5
    lake_rx: tuple[float, float] = (0.15, 0.35)
    lake_ry: tuple[float, float] = (0.05, 0.12)
    road_p: float = 0.5
    road_width: tuple[float, float] = (0.12, 0.25)
    houses: tuple[float, ...] = (0.3, 0.35, 0.25, 0.1)
    house_scale: float = 1.0
    trees: tuple[int, int] = (0, 7)
    tree_scale: float = 1.0


_DEFAULT_PRIOR = _Prior()


@dataclass(frozen=True)
class Scene:
    """One rendered scene.

    ``image``: float32 ``[3, S, S]`` in [-1, 1]; ``masks``: bool ``[C, S, S]`` in
    :data:`~models.toyworld.concepts.CONCEPTS` order; ``leaf``: uint8 ``[S, S]`` leaf ids.
    """

    image: np.ndarray
    masks: np.ndarray
    leaf: np.ndarray


class _Canvas:
    """An id map plus, per primitive id, its leaf and base colour."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids = np.zeros((size, size), dtype=np.uint8)
        self.leaf: list[int] = []
        self.color: list[tuple[float, float, float]] = []

    def new(self, leaf: str, color: np.ndarray | tuple[float, float, float]) -> int:
        if len(self.leaf) >= _MAX_PRIMITIVES:
            raise RuntimeError("too many primitives in one Toyworld scene")
        self.leaf.append(LEAF_ID[leaf])
        c = np.clip(np.asarray(color, dtype=np.float64), 0.0, 1.0)
        self.color.append((float(c[0]), float(c[1]), float(c[2])))
        return len(self.leaf) - 1

    def px(self, v: float) -> int:
        return int(round(v * self.size))

    def poly(self, pid: int, pts: list[tuple[float, float]]) -> None:
        arr = np.array([[self.px(x), self.px(y)] for x, y in pts], dtype=np.int32)
        cv2.fillPoly(self.ids, [arr], pid, lineType=cv2.LINE_8)

    def rect(self, pid: int, x0: float, y0: float, x1: float, y1: float) -> None:
        a, b = self.px(x0), self.px(y0)
        c, d = max(self.px(x1), a + 1), max(self.px(y1), b + 1)
        self.ids[max(b, 0):max(d, 0), max(a, 0):max(c, 0)] = pid

    def ellipse(self, pid: int, cx: float, cy: float, rx: float, ry: float) -> None:
        axes = (max(self.px(rx), 1), max(self.px(ry), 1))
        cv2.ellipse(self.ids, (self.px(cx), self.px(cy)), axes, 0, 0, 360, pid, -1,
                    lineType=cv2.LINE_8)


def _jitter(rng: np.random.Generator, base: tuple[float, float, float],
            amount: float) -> np.ndarray:
    return np.asarray(base) + rng.uniform(-amount, amount, size=3)


_SKIES = {
    "day": ((0.22, 0.45, 0.88), (0.62, 0.80, 0.98)),
    "dusk": ((0.30, 0.20, 0.50), (0.98, 0.58, 0.30)),
    "overcast": ((0.62, 0.64, 0.67), (0.80, 0.81, 0.83)),
}
_WALLS = ((0.90, 0.85, 0.70), (0.95, 0.95, 0.92), (0.72, 0.32, 0.22), (0.62, 0.75, 0.85),
          (0.85, 0.75, 0.45))
_ROOFS = ((0.60, 0.15, 0.10), (0.35, 0.20, 0.12), (0.25, 0.25, 0.30), (0.50, 0.30, 0.15))
_CROWNS = ((0.12, 0.40, 0.10), (0.08, 0.30, 0.12), (0.20, 0.45, 0.08), (0.75, 0.45, 0.10))


def _draw_sky(cv: _Canvas, rng: np.random.Generator, horizon: float,
              sub: _Substreams | None = None) -> dict:
    kind = ("day", "dusk", "overcast")[int(rng.choice(3, p=[0.55, 0.25, 0.20]))]
    top, bottom = (_jitter(rng, c, 0.05) for c in _SKIES[kind])
    sky = cv.new("sky", top)
    cv.ids[:] = sky
    if kind != "overcast" and rng.random() < 0.6:
        r = rng.uniform(0.05, 0.09)
        cx = rng.uniform(0.1, 0.9)
        cy = rng.uniform(0.08, horizon - 0.1) if kind == "day" else horizon - rng.uniform(0.0, 0.12)
        color = (1.0, 0.95, 0.65) if kind == "day" else (1.0, 0.45, 0.20)
        cv.ellipse(cv.new("sun", _jitter(rng, color, 0.03)), cx, cy, r, r)
    cloud_color = {"day": (0.96, 0.96, 0.97), "dusk": (0.90, 0.70, 0.72),
                   "overcast": (0.45, 0.46, 0.50)}[kind]
    for k in range(int(rng.integers(0, 4 if kind != "overcast" else 5))):
        rng = sub("cloud", k) if sub else rng
        pid = cv.new("cloud", _jitter(rng, cloud_color, 0.03))
        cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.06, max(horizon - 0.15, 0.1))
        w = rng.uniform(0.10, 0.22)
        for _ in range(int(rng.integers(2, 5))):
            cv.ellipse(pid, cx + rng.uniform(-w, w) * 0.7, cy + rng.uniform(-0.02, 0.02),
                       w * rng.uniform(0.4, 0.7), w * rng.uniform(0.22, 0.35))
    return {"kind": kind, "sky_top": top, "sky_bottom": bottom, "sky_id": sky}


def _draw_mountains(cv: _Canvas, rng: np.random.Generator, horizon: float,
                    prior: _Prior = _DEFAULT_PRIOR, sub: _Substreams | None = None) -> None:
    hlo, hhi = prior.mountain_height
    for k in range(int(rng.integers(*prior.mountains))):
        rng = sub("mountain", k) if sub else rng
        base = _jitter(rng, ((0.42, 0.45, 0.55), (0.45, 0.38, 0.32), (0.38, 0.40, 0.46))
                       [int(rng.integers(3))], 0.05)
        pid = cv.new("mountain", base)
        x0 = rng.uniform(-0.3, 0.8)
        width = rng.uniform(*prior.mountain_width)
        peaks = int(rng.integers(1, 3))
        pts = [(x0, horizon + 0.02)]
        for k in range(peaks):
            px = x0 + width * (k + rng.uniform(0.3, 0.7)) / peaks
            pts.append((px, horizon - rng.uniform(hlo, min(hhi, horizon - 0.05))))
            if k < peaks - 1:
                pts.append((x0 + width * (k + 1) / peaks, horizon - rng.uniform(0.03, 0.08)))
        pts.append((x0 + width, horizon + 0.02))
        cv.poly(pid, pts)


def _draw_ground(cv: _Canvas, rng: np.random.Generator, horizon: float,
                 prior: _Prior = _DEFAULT_PRIOR, sub: _Substreams | None = None) -> None:
    grass = cv.new("grass", _jitter(rng, (0.30, 0.62, 0.22), 0.07))
    cv.rect(grass, 0.0, horizon, 1.0, 1.0)
    if sub:
        rng = sub("water", 0)
    if rng.random() < prior.water_p:
        water = cv.new("water", _jitter(rng, (0.12, 0.32, 0.62), 0.05))
        if rng.random() < prior.lake_p:  # lake
            cv.ellipse(water, rng.uniform(0.15, 0.85), rng.uniform(horizon + 0.08, 0.85),
                       rng.uniform(*prior.lake_rx), rng.uniform(*prior.lake_ry))
        else:  # river, wider when near
            xa, xb = rng.uniform(0.1, 0.9), rng.uniform(0.0, 1.0)
            wa, wb = rng.uniform(0.02, 0.05), rng.uniform(0.10, 0.22)
            cv.poly(water, [(xa - wa, horizon), (xa + wa, horizon), (xb + wb, 1.0),
                            (xb - wb, 1.0)])
    if sub:
        rng = sub("road", 0)
    if rng.random() < prior.road_p:
        road = cv.new("road", _jitter(rng, (0.40, 0.40, 0.42), 0.05))
        xv, xb = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.9)
        wv, wb = rng.uniform(0.01, 0.03), rng.uniform(*prior.road_width)
        cv.poly(road, [(xv - wv, horizon), (xv + wv, horizon), (xb + wb, 1.05), (xb - wb, 1.05)])


def _draw_house(cv: _Canvas, rng: np.random.Generator, x: float, base: float, scale: float) -> None:
    w = rng.uniform(0.20, 0.36) * scale
    h = w * rng.uniform(0.55, 0.85)
    x0, x1, top = x - w / 2, x + w / 2, base - h
    cv.rect(cv.new("wall", _jitter(rng, _WALLS[int(rng.integers(len(_WALLS)))], 0.04)),
            x0, top, x1, base)
    roof = cv.new("roof", _jitter(rng, _ROOFS[int(rng.integers(len(_ROOFS)))], 0.04))
    rh = w * rng.uniform(0.3, 0.5)
    over = w * 0.08
    if rng.random() < 0.6:
        cv.poly(roof, [(x0 - over, top + 0.005), (x, top - rh), (x1 + over, top + 0.005)])
    else:
        cv.poly(roof, [(x0 - over, top + 0.005), (x0 + w * 0.2, top - rh * 0.8),
                       (x1 - w * 0.2, top - rh * 0.8), (x1 + over, top + 0.005)])
    dw, dh = max(w * 0.2, 2.0 / cv.size), h * rng.uniform(0.45, 0.65)
    dx = x + rng.uniform(-0.25, 0.25) * w
    cv.rect(cv.new("door", _jitter(rng, (0.30, 0.17, 0.08), 0.05)), dx - dw / 2, base - dh,
            dx + dw / 2, base)
    ws = max(w * rng.uniform(0.16, 0.22), 2.5 / cv.size)
    wy = top + h * 0.22
    wcol = (0.55, 0.80, 0.95) if rng.random() < 0.7 else (1.0, 0.90, 0.45)
    for side in (-1, 1):
        if rng.random() < 0.85:
            wx = x + side * w * 0.3
            if abs(wx - dx) < (ws + dw) / 2 + 0.01:
                continue
            cv.rect(cv.new("window", _jitter(rng, wcol, 0.04)), wx - ws / 2, wy, wx + ws / 2,
                    wy + ws)


def _draw_tree(cv: _Canvas, rng: np.random.Generator, x: float, base: float, scale: float) -> None:
    trunk_color = _jitter(rng, (0.36, 0.22, 0.10), 0.04)
    crown_color = _jitter(rng, _CROWNS[int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))], 0.04)
    h = rng.uniform(0.22, 0.40) * scale
    tw = max(h * rng.uniform(0.08, 0.12), 2.0 / cv.size)
    if rng.random() < 0.55:  # round deciduous tree
        th = h * rng.uniform(0.35, 0.5)
        cv.rect(cv.new("trunk", trunk_color), x - tw / 2, base - th, x + tw / 2, base)
        r = h * rng.uniform(0.28, 0.38)
        crown = cv.new("crown", crown_color)
        cv.ellipse(crown, x, base - th - r * 0.7, r, r * rng.uniform(0.85, 1.1))
        if rng.random() < 0.5:
            cv.ellipse(crown, x + r * 0.5, base - th - r * 0.4, r * 0.6, r * 0.55)
    else:  # conifer: stacked triangles on a short trunk
        th = h * rng.uniform(0.12, 0.2)
        cv.rect(cv.new("trunk", trunk_color), x - tw / 2, base - th, x + tw / 2, base)
        crown = cv.new("crown", crown_color * np.array([0.8, 0.9, 0.9]))
        hw = h * rng.uniform(0.22, 0.3)
        tiers = int(rng.integers(1, 4))
        for k in range(tiers):
            y_bot = base - th - (h - th) * k / (tiers + 1)
            y_top = base - h if k == tiers - 1 else y_bot - (h - th) * 0.6
            f = 1.0 - 0.25 * k
            cv.poly(crown, [(x - hw * f, y_bot), (x, y_top), (x + hw * f, y_bot)])


def _texture(cv: _Canvas, rng: np.random.Generator, layout: dict, horizon: float) -> np.ndarray:
    size = cv.size
    colors = np.asarray(cv.color, dtype=np.float32)
    leaf_of = np.asarray(cv.leaf, dtype=np.uint8)
    img = colors[cv.ids]  # [S, S, 3]
    leaf = leaf_of[cv.ids]
    # Sky: vertical gradient from top to horizon.
    t = np.clip(np.arange(size, dtype=np.float32) / max(horizon * size, 1.0), 0, 1)[:, None, None]
    grad = (1 - t) * layout["sky_top"].astype(np.float32) + t * layout["sky_bottom"].astype(
        np.float32)
    sky = leaf == LEAF_ID["sky"]
    img = np.where(sky[..., None], np.broadcast_to(grad, img.shape), img)
    # Blotchy low-frequency texture, stronger on vegetation.
    blot = cv2.resize(rng.standard_normal((size // 8 + 1, size // 8 + 1)).astype(np.float32),
                      (size, size), interpolation=cv2.INTER_LINEAR)
    fine = cv2.resize(rng.standard_normal((size // 2, size // 2)).astype(np.float32),
                      (size, size), interpolation=cv2.INTER_NEAREST)
    amp = np.zeros(len(LEAVES), dtype=np.float32)
    famp = np.zeros(len(LEAVES), dtype=np.float32)
    for name, a, f in (("grass", 0.10, 0.06), ("crown", 0.12, 0.12), ("mountain", 0.06, 0.03),
                       ("road", 0.03, 0.04), ("roof", 0.04, 0.05), ("wall", 0.02, 0.02),
                       ("cloud", 0.02, 0.0), ("water", 0.03, 0.0)):
        amp[LEAF_ID[name]], famp[LEAF_ID[name]] = a, f
    img = img * (1.0 + amp[leaf][..., None] * blot[..., None] + famp[leaf][..., None]
                 * fine[..., None])
    # Water ripples: horizontal bands.
    water = leaf == LEAF_ID["water"]
    if water.any():
        rows = np.arange(size, dtype=np.float32)
        ripple = 0.08 * np.sin(rows * rng.uniform(1.2, 2.0) + rng.uniform(0, 6.3))
        img = img + (water[..., None] * ripple[:, None, None])
    # Grass darkens towards the horizon (aerial perspective).
    img = img + rng.normal(0.0, 0.015, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def render_scene(seed: int, index: int, size: int = 64, scene_type: str | None = None) -> Scene:
    """Render scene ``index`` of ``seed`` at ``size``×``size`` pixels (see module docstring).

    With ``scene_type`` (one of :data:`SCENE_TYPES`) the scene is drawn from that type's prior
    until :func:`scene_type_of` gives that type with the margin :data:`SCENE_MARGIN`; it still
    depends only on ``(seed, index, scene_type, size)``. ``None`` renders the untyped scene.
    """
    if size < 16:
        raise ValueError(f"Toyworld scenes need size >= 16 pixels, got {size}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    if scene_type is not None and scene_type not in _PRIORS:
        raise ValueError(f"unknown scene type {scene_type!r}; scene types: "
                         f"{', '.join(SCENE_TYPES)}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
    if scene_type is None:
        return _draw_scene(rng, size, _DEFAULT_PRIOR)
    for _ in range(_MAX_ATTEMPTS):
        scene = _draw_scene(rng, size, _PRIORS[scene_type])
        if _is_clear_instance(scene.leaf, scene_type):
            return scene
    raise RuntimeError(f"no clear {scene_type!r} scene in {_MAX_ATTEMPTS} draws for seed={seed}, "
                       f"index={index}, size={size}")


def _draw_scene(rng: np.random.Generator, size: int, prior: _Prior) -> Scene:
    """One scene from ``rng`` under ``prior`` (the default prior: the untyped renderer)."""
    cv = _Canvas(size)
    horizon = float(rng.uniform(*prior.horizon))
    layout = _draw_sky(cv, rng, horizon)
    _draw_mountains(cv, rng, horizon, prior)
    _draw_ground(cv, rng, horizon, prior)
    things: list[tuple[float, str]] = []
    things += [(float(rng.uniform(horizon + 0.05, 1.0)), "house")
               for _ in range(int(rng.choice(len(prior.houses), p=list(prior.houses))))]
    things += [(float(rng.uniform(horizon + 0.03, 1.05)), "tree")
               for _ in range(int(rng.integers(*prior.trees)))]
    for base, kind in sorted(things):  # far (small base y) to near
        scale = 0.45 + 0.75 * (base - horizon) / (1.0 - horizon)
        x = float(rng.uniform(0.05, 0.95))
        if kind == "house":
            _draw_house(cv, rng, x, base, scale * prior.house_scale)
        else:
            _draw_tree(cv, rng, x, base, scale * prior.tree_scale)
    img = _texture(cv, rng, layout, horizon)
    leaf = np.asarray(cv.leaf, dtype=np.uint8)[cv.ids]
    return Scene(image=np.ascontiguousarray(img.transpose(2, 0, 1)) * 2.0 - 1.0,
                 masks=leaves_to_masks(leaf), leaf=leaf)


# --- scene types -------------------------------------------------------------------------------

#: Scene types, in class-index order.
SCENE_TYPES: tuple[str, ...] = ("village", "forest", "lake", "road", "mountains", "open_field")
#: Type -> (defining concept, threshold on the fraction of the image it covers).
SCENE_RULES: dict[str, tuple[str, float]] = {
    "village": ("house", 0.08),
    "forest": ("tree", 0.20),
    "lake": ("water", 0.10),
    "road": ("road", 0.08),
    "mountains": ("mountain", 0.15),
}
#: A typed scene keeps every other type's fraction/threshold ratio at or below this.
SCENE_MARGIN = 0.5
_MAX_ATTEMPTS = 200
_LEAVES_OF = {concept: [LEAF_ID[leaf] for leaf, obj in PART_OF.items() if obj == concept]
              or [LEAF_ID[concept]] for concept, _ in SCENE_RULES.values()}

#: Shared by the typed priors: low hills, no water or road, rarely a (small) house.
_TYPED_BASE = _Prior(mountains=(0, 2), mountain_height=(0.04, 0.12), water_p=0.0, road_p=0.0,
                     houses=(0.8, 0.2), house_scale=0.8)
_PRIORS: dict[str, _Prior] = {
    "village": replace(_TYPED_BASE, houses=(0.0, 0.0, 0.0, 0.4, 0.4, 0.2), house_scale=1.3,
                       trees=(0, 3)),
    "forest": replace(_TYPED_BASE, houses=(0.9, 0.1), trees=(9, 17), tree_scale=1.3),
    "lake": replace(_TYPED_BASE, water_p=1.0, lake_p=0.85, lake_rx=(0.3, 0.5),
                    lake_ry=(0.12, 0.22), trees=(0, 4), tree_scale=0.8),
    "road": replace(_TYPED_BASE, road_p=1.0, road_width=(0.22, 0.40), trees=(0, 4),
                    tree_scale=0.8),
    "mountains": replace(_TYPED_BASE, horizon=(0.5, 0.65), mountains=(3, 6),
                         mountain_height=(0.25, 0.45), mountain_width=(0.5, 0.9), trees=(0, 3),
                         tree_scale=0.8),
    "open_field": replace(_TYPED_BASE, mountain_height=(0.04, 0.10), trees=(0, 3)),
}


def scene_types() -> tuple[str, ...]:
    """The scene types :func:`render_scene` accepts, in class-index order."""
    return SCENE_TYPES


def scene_ratios(leaf: np.ndarray) -> dict[str, float]:
    """Per type with a defining concept: the fraction of pixels of ``leaf`` (a leaf-id map
    ``[H, W]``) that carry the concept, divided by the type's threshold."""
    n = leaf.size
    return {t: float(np.isin(leaf, _LEAVES_OF[c]).sum()) / n / thr
            for t, (c, thr) in SCENE_RULES.items()}


def scene_type_of(leaf: np.ndarray) -> str:
    """The scene type of a leaf-id map ``[H, W]`` by the rule of the module docstring.

    >>> scene_type_of(np.full((8, 8), LEAF_ID["grass"], dtype=np.uint8))
    'open_field'
    """
    ratios = scene_ratios(leaf)
    best = max(ratios, key=lambda t: ratios[t])  # ties: the first in SCENE_TYPES order
    return best if ratios[best] >= 1.0 else "open_field"


def _is_clear_instance(leaf: np.ndarray, scene_type: str) -> bool:
    ratios = scene_ratios(leaf)
    others = [r for t, r in ratios.items() if t != scene_type]
    own = ratios.get(scene_type, 1.0)  # open_field has no defining concept
    return own >= 1.0 and max(others) <= SCENE_MARGIN


def render_typed_batch(seed: int, start: int, n: int, size: int = 64
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced typed scenes ``start .. start+n-1`` of ``seed``: scene ``i`` has type
    ``SCENE_TYPES[i % len(SCENE_TYPES)]``. Returns images ``[n,3,S,S]`` float32 in [-1, 1],
    masks ``[n,C,S,S]`` bool and labels ``[n]`` int64 (indices into :data:`SCENE_TYPES`)."""
    labels = np.array([(start + i) % len(SCENE_TYPES) for i in range(n)], dtype=np.int64)
    scenes = [render_scene(seed, start + i, size, SCENE_TYPES[int(labels[i])]) for i in range(n)]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    return images, np.stack([s.masks for s in scenes]), labels


def render_batch(seed: int, start: int, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scenes ``start .. start+n-1`` of ``seed``: images ``[n,3,S,S]`` float32, masks
    ``[n,C,S,S]`` bool."""
    scenes = [render_scene(seed, start + i, size) for i in range(n)]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    masks = np.stack([s.masks for s in scenes])
    return images, masks


def render_leaves(seed: int, start: int, n: int, size: int = 64) -> np.ndarray:
    """Leaf-id maps ``[n, S, S]`` (uint8) of scenes ``start .. start+n-1`` of ``seed``."""
    return np.stack([render_scene(seed, start + i, size).leaf for i in range(n)])
