"""GANPaint as an API: concept brushes built from dissection and causal effects
(:mod:`.brushes`), and strokes, an undoable history and rendering (:mod:`.painter`). Builds on
:mod:`gandissect.intervention`, :mod:`gandissect.dissection` and :mod:`gandissect.common`."""
