"""The dissection engine: which units draw which concept, scored by IoU.

Per-unit activation quantiles (:mod:`.quantile`) and exact counts (:mod:`.stats`) of upsampled
activations (:mod:`.upsample`), one layer's statistics (:mod:`.layer_stats`) under the run's
settings (:mod:`.config`), the two-pass, resumable, shardable run (:mod:`.engine`) and what it
has done (:mod:`.progress`: sample ranges, worker chunks, saved state), saved results
(:mod:`.results`) and the HTML report (:mod:`.report`). Builds on :mod:`gandissect.common` only.
"""
