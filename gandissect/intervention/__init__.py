"""Interventions and their causal effects: edits of a layer's units as data, applied by one rule
(:mod:`.edit`), causal effects and unit statistics (:mod:`.causal`), unit rankings and effect
sweeps (:mod:`.ranking`) and insertion heatmaps (:mod:`.insertion`). Builds on
:mod:`gandissect.common` (and may use :mod:`gandissect.dissection`)."""
