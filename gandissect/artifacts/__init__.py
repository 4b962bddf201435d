"""GAN quality and artifact removal: segmentation-based quality and Frechet distances
(:mod:`.quality`), realism measures (:mod:`.realism`), per-unit artifact scores
(:mod:`.scores`), the removal study (:mod:`.removal`) and planted ground-truth artifacts
(:mod:`.plant`). Builds on :mod:`gandissect.intervention` and :mod:`gandissect.common`."""
