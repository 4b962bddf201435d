"""gandissect: dissect the units of generative image models, intervene on them, paint with them.

The public API is re-exported here; submodules are implementation details.

>>> import models, segmenters
>>> from gandissect import Edit, intervene
>>> gen = models.load("planted")
>>> z = gen.sample_latents(2, seed=0)
>>> tree = gen.planted_units["tree"]
>>> with intervene(gen, Edit("layout", [tree])):
...     edited = gen(z)
>>> bool((gen(z) != edited).any())
True
"""

from __future__ import annotations

from .artifacts.plant import plant_artifacts
from .artifacts.quality import frechet_distance, gan_quality
from .artifacts.realism import DiscriminatorMeasure, FIDMeasure, RealismMeasure
from .artifacts.removal import ArtifactScores, RemovalStudy, artifact_scores, removal_study
from .common.hooks import Trace, run_to_layers
from .dissection.config import (
    DissectConfig,
    DissectLockedError,
    DissectMismatchError,
    DissectStateError,
)
from .dissection.engine import dissect, dissect_probe
from .dissection.probe import ProbeModel
from .dissection.report import write_report
from .dissection.results import LayerResult, load_results, save_results
from .dissection.rotation import Rotated, random_rotation
from .intervention.causal import (
    CausalEffect,
    EffectStats,
    UnitStatistics,
    causal_effect,
    random_units,
    unit_statistics,
)
from .intervention.edit import (
    Edit,
    ablation,
    active_edits,
    apply_edits,
    clear_edits,
    insertion,
    intervene,
    layer_shape,
)
from .intervention.insertion import InsertionHeatmap, insertion_heatmap
from .intervention.ranking import (
    UnitRanking,
    effect_sweep,
    optimize_alpha,
    plot_sweep,
    rank_by_iou,
    single_unit_ace,
)
from .inversion.invert import Inversion, InversionSettings, invert
from .inversion.photo import PhotoError, load_photo
from .paint.brushes import Brush, BrushSet, build_brushes
from .paint.painter import History, Painter, Stroke

__version__ = "0.1.0"

__all__ = [
    "ArtifactScores", "Brush", "BrushSet", "DiscriminatorMeasure", "FIDMeasure", "History",
    "Painter", "RealismMeasure", "RemovalStudy", "Stroke", "artifact_scores", "build_brushes",
    "frechet_distance", "gan_quality", "plant_artifacts", "removal_study",
    "CausalEffect", "DissectConfig", "DissectLockedError", "DissectMismatchError",
    "DissectStateError", "Edit", "EffectStats",
    "InsertionHeatmap", "LayerResult", "Trace", "UnitRanking", "UnitStatistics", "__version__",
    "ablation", "active_edits", "apply_edits", "causal_effect", "clear_edits", "dissect",
    "effect_sweep", "insertion", "insertion_heatmap", "intervene", "layer_shape", "load_results",
    "optimize_alpha", "plot_sweep", "random_units", "rank_by_iou", "run_to_layers",
    "save_results", "single_unit_ace", "unit_statistics", "write_report",
    "ProbeModel", "Rotated", "dissect_probe", "random_rotation",
    "Inversion", "InversionSettings", "PhotoError", "invert", "load_photo",
]
