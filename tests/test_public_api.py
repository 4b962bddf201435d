"""The flat public API (``from gandissect import ...``) is stable across layout changes."""

from __future__ import annotations

import importlib

import gandissect

#: ``gandissect.__all__`` as it was when the package was flat; names may be added, never dropped.
API = {
    "ArtifactScores", "Brush", "BrushSet", "DiscriminatorMeasure", "FIDMeasure", "History",
    "Painter", "RealismMeasure", "RemovalStudy", "Stroke", "artifact_scores", "build_brushes",
    "frechet_distance", "gan_quality", "plant_artifacts", "removal_study",
    "CausalEffect", "DissectConfig", "DissectMismatchError", "Edit", "EffectStats",
    "InsertionHeatmap", "LayerResult", "Trace", "UnitRanking", "UnitStatistics", "__version__",
    "ablation", "active_edits", "apply_edits", "causal_effect", "clear_edits", "dissect",
    "effect_sweep", "insertion", "insertion_heatmap", "intervene", "layer_shape", "load_results",
    "optimize_alpha", "plot_sweep", "random_units", "rank_by_iou", "run_to_layers",
    "save_results", "single_unit_ace", "unit_statistics", "write_report",
}


def test_every_name_of_all_imports() -> None:
    assert API <= set(gandissect.__all__)
    assert len(gandissect.__all__) == len(set(gandissect.__all__))
    scope: dict[str, object] = {}
    exec("from gandissect import *", scope)
    for name in gandissect.__all__:
        assert scope[name] is getattr(gandissect, name), name


def test_names_are_the_objects_of_their_modules() -> None:
    where = {
        "Trace": "gandissect.common.hooks",
        "DissectConfig": "gandissect.dissection.config",
        "dissect": "gandissect.dissection.engine",
        "LayerResult": "gandissect.dissection.results",
        "write_report": "gandissect.dissection.report",
        "Edit": "gandissect.intervention.edit",
        "insertion": "gandissect.intervention.edit",
        "causal_effect": "gandissect.intervention.causal",
        "rank_by_iou": "gandissect.intervention.ranking",
        "insertion_heatmap": "gandissect.intervention.insertion",
        "artifact_scores": "gandissect.artifacts.removal",
        "gan_quality": "gandissect.artifacts.quality",
        "FIDMeasure": "gandissect.artifacts.realism",
        "plant_artifacts": "gandissect.artifacts.plant",
        "BrushSet": "gandissect.paint.brushes",
        "Painter": "gandissect.paint.painter",
    }
    for name, module in where.items():
        assert getattr(gandissect, name) is getattr(importlib.import_module(module), name), name
