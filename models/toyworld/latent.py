"""Toyworld scenes as a function of a latent vector: ``render_latent(z)`` for ``z ~ N(0, I_128)``.

The seeded renderer (:func:`~models.toyworld.render.render_scene`) draws a scene from one
sequential random stream, so a scene is not a smooth function of anything a network could be
given. This renderer draws the *same kind* of scene with every random choice read from fixed
coordinates ("slots") of a 128-d standard-normal latent, so a generator can be trained by
regression to draw ``render_latent(z)`` from ``z`` (the supervised start of the bundled GAN's
training, ``models/pretrain_toyworld_gan.py``).

Each object has its own stream of slots: the scene (horizon and the numbers of houses and trees),
the sky (kind, colours, sun, number of clouds), each cloud, each mountain, the grass, the water,
the road, each house, each tree, and the water's ripples. The ``j``-th draw of a stream with
``m`` slots is ``Phi(z[slot_j])`` for ``j < m`` (``Phi`` the standard normal CDF, so each draw is
uniform on [0, 1) and independent of the others) and ``Phi(w_j . z[slots])`` with a fixed unit
vector ``w_j`` after that (still uniform, but correlated with the stream's first draws). Changing
one object's slots therefore moves only that object, and a count moves only the objects it
adds or removes. Houses and trees are drawn far to near as in the seeded renderer.

Fine texture (blotches, grain) is not a function of ``z``: with ``detail=None`` it is left out
(flat colours, sky gradient and ripples kept: the regression target), with ``detail=seed`` it
is drawn from a seeded numpy stream as in the seeded renderer. Object counts, sizes, colours and
positions have the seeded renderer's distributions; a few minor details (cloud puffs, roof kind,
window colours) are correlated within their object.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any

import numpy as np

from .concepts import leaves_to_masks
from .render import (
    _DEFAULT_PRIOR,
    Scene,
    _Canvas,
    _draw_ground,
    _draw_house,
    _draw_mountains,
    _draw_sky,
    _draw_tree,
    _texture,
)

#: Latent dimension (the bundled generator's ``Z_DIM``).
LATENT_DIM = 128
#: (stream kind, number of objects of that kind, slots per object), in slot order.
STREAMS: tuple[tuple[str, int, int], ...] = (
    ("scene", 1, 4), ("sky", 1, 8), ("cloud", 4, 4), ("mountains", 1, 1), ("mountain", 3, 4),
    ("grass", 1, 3), ("water", 1, 6), ("road", 1, 6), ("house", 3, 8), ("tree", 6, 5),
    ("ripple", 1, 2),
)


def _slot_table() -> dict[tuple[str, int], slice]:
    table, start = {}, 0
    for kind, count, width in STREAMS:
        for k in range(count):
            table[kind, k] = slice(start, start + width)
            start += width
    if start > LATENT_DIM:
        raise AssertionError(f"streams need {start} slots, the latent has {LATENT_DIM}")
    return table


SLOTS = _slot_table()


def _phi(g: float) -> float:
    """Standard normal CDF, kept inside [0, 1) so ``floor(u * n) < n``."""
    return min(0.5 * (1.0 + math.erf(g / math.sqrt(2.0))), 1.0 - 1e-12)


@functools.lru_cache(maxsize=4096)
def _mixing(key: tuple[str, int], j: int) -> np.ndarray:
    """The fixed unit vector ``w_j`` of stream ``key`` (a function of the key and ``j`` only)."""
    width = SLOTS[key].stop - SLOTS[key].start
    w = np.random.default_rng([zlib.crc32(key[0].encode()), key[1], j]).standard_normal(width)
    return w / np.linalg.norm(w)


class LatentStream:
    """The random stream of one object, read from its latent slots (see module docstring).

    Implements the part of ``numpy.random.Generator`` the Toyworld drawing functions use.
    ``standard_normal`` and ``normal`` (texture only) return zeros without ``detail``.
    """

    def __init__(self, key: tuple[str, int], z: np.ndarray,
                 detail: np.random.Generator | None = None) -> None:
        self.key = key
        self._g = np.asarray(z[SLOTS[key]], dtype=np.float64)
        self._detail = detail
        self._k = 0

    def _next(self) -> float:
        j, m = self._k, len(self._g)
        self._k += 1
        if j < m:
            return _phi(float(self._g[j]))
        return _phi(float(_mixing(self.key, j) @ self._g))

    def random(self) -> float:
        return self._next()

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | None = None) -> Any:
        if size is None:
            return low + (high - low) * self._next()
        return np.array([low + (high - low) * self._next() for _ in range(size)])

    def integers(self, low: int, high: int | None = None) -> int:
        if high is None:
            low, high = 0, low
        return low + min(int(self._next() * (high - low)), high - low - 1)

    def choice(self, n: int, p: Any = None) -> int:
        u = self._next()
        if p is None:
            return min(int(u * n), n - 1)
        cum = np.cumsum(np.asarray(p, dtype=np.float64))
        return int(min(np.searchsorted(cum, u * cum[-1], side="right"), n - 1))

    def standard_normal(self, size: Any) -> np.ndarray:
        if self._detail is None:
            return np.zeros(size)
        return self._detail.standard_normal(size)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> np.ndarray:
        return loc + scale * self.standard_normal(size)


def render_latent(z: np.ndarray, size: int = 64, detail: int | None = None) -> Scene:
    """The Toyworld scene of latent ``z`` (``[128]``, standard normal) at ``size`` pixels.

    ``detail``: ``None`` draws no fine texture or grain (a deterministic function of ``z``);
    an integer seeds the texture as the seeded renderer would draw it.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.shape != (LATENT_DIM,):
        raise ValueError(f"render_latent takes one latent of shape ({LATENT_DIM},), "
                         f"got {tuple(z.shape)}")
    if not np.isfinite(z).all():
        raise ValueError("render_latent: the latent has NaN or infinite entries")
    if size < 16:
        raise ValueError(f"Toyworld scenes need size >= 16 pixels, got {size}")
    tex = None if detail is None else np.random.default_rng([detail, 0x7e])

    def sub(kind: str, k: int) -> Any:
        return LatentStream((kind, k), z, tex)

    prior = _DEFAULT_PRIOR
    scene = sub("scene", 0)
    cv = _Canvas(size)
    horizon = float(scene.uniform(*prior.horizon))
    layout = _draw_sky(cv, sub("sky", 0), horizon, sub)
    _draw_mountains(cv, sub("mountains", 0), horizon, prior, sub)
    _draw_ground(cv, sub("grass", 0), horizon, prior, sub)
    houses = int(scene.choice(len(prior.houses), p=list(prior.houses)))
    trees = int(scene.integers(*prior.trees))
    things = []
    for kind, lo, hi, count in (("house", 0.05, 1.0, houses), ("tree", 0.03, 1.05, trees)):
        for k in range(count):
            s = sub(kind, k)
            base = float(s.uniform(horizon + lo, hi))
            things.append((base, kind, k, float(s.uniform(0.05, 0.95)), s))
    for base, kind, _, x, s in sorted(things, key=lambda t: t[:3]):  # far to near
        scale = 0.45 + 0.75 * (base - horizon) / (1.0 - horizon)
        draw = _draw_house if kind == "house" else _draw_tree
        draw(cv, s, x, base, scale)
    img = _texture(cv, sub("ripple", 0), layout, horizon)
    leaf = np.asarray(cv.leaf, dtype=np.uint8)[cv.ids]
    return Scene(image=np.ascontiguousarray(img.transpose(2, 0, 1)) * 2.0 - 1.0,
                 masks=leaves_to_masks(leaf), leaf=leaf)


def render_latent_batch(z: np.ndarray, size: int = 64, detail: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Scenes of latents ``z`` ``[n, 128]``: images ``[n, 3, S, S]`` float32 in [-1, 1] and leaf
    maps ``[n, S, S]`` uint8. With ``detail``, scene ``i`` uses texture seed ``(detail, i)``."""
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"render_latent_batch takes latents [n, {LATENT_DIM}], got "
                         f"{tuple(z.shape)}")
    scenes = [render_latent(z[i], size, None if detail is None else detail * 1_000_003 + i)
              for i in range(len(z))]
    return (np.stack([s.image for s in scenes]).astype(np.float32),
            np.stack([s.leaf for s in scenes]))
