"""Which variants a study runs, and what each changes."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.settings import with_settings
from pipeline.study.variants import BASELINE, VARIANTS, parse_seeds, plan_variants
from pipeline.training.recipes import RECIPES

SMALL = {"max_epochs": 3, "patience": 3, "batch_size": 2, "base_channels": 8}


def _by_name(selection: str, recipe: str = "default") -> dict:
    return {variant.name: variant for variant in plan_variants(selection, recipe, SMALL)}


def test_all_covers_every_component_of_the_issue_and_skips_the_no_op() -> None:
    planned = _by_name("all")
    assert next(iter(planned)) == BASELINE
    # depth_4 of a depth-4 baseline would repeat the baseline, as augment_light would its
    # light augmentation; encoder needs the optional extra, so it runs only where named.
    assert set(planned) == set(VARIANTS) - {"depth_4", "augment_light", "encoder"}
    planned |= _by_name("all,encoder")
    baseline = planned[BASELINE].config
    assert baseline == with_settings(RECIPES["default"], SMALL)
    expected = {
        "skip": {"skip_connections": False},
        "depth_3": {"depth": 3},
        "depth_5": {"depth": 5},
        "width_half": {"base_channels": 4},
        "width_double": {"base_channels": 16},
        "batch_norm": {"batch_norm": False},
        "upsampling": {"upsampling": "bilinear"},
        "encoder": {"encoder": "resnet34"},
        "loss": {"loss": "bce"},
        "augment_none": {"augment": "none"},
        "augment_strong": {"augment": "strong"},
        "ema": {"ema_decay": 0.999},
        "optimisation": {
            "optimizer": "adam",
            "lr": 1e-5,
            "weight_decay": 0.0,
            "schedule": "plateau",
        },
    }
    for name, change in expected.items():
        assert planned[name].config == with_settings(baseline, change), name
        assert planned[name].recipe == "default"
        for setting in change:
            assert setting in planned[name].description


def test_paper_keeps_its_recipe_but_takes_the_studys_budget_and_size() -> None:
    paper = _by_name("paper")["paper"]
    assert paper.recipe == "paper"
    assert paper.config == with_settings(RECIPES["paper"], SMALL)
    assert paper.description.startswith("recipe paper at the same budget")


def test_variants_flip_whatever_the_baseline_has() -> None:
    planned = _by_name("batch_norm,augment_none,augment_light,loss,depth_4", recipe="paper")
    assert planned["batch_norm"].settings["batch_norm"] is True
    assert planned["augment_light"].settings["augment"] == "light"
    assert "augment_none" not in planned  # paper augments nothing already
    assert planned["loss"].settings["loss"] == "bce_dice"
    assert "depth_4" not in planned  # paper is depth 4 too
    assert "paper" not in _by_name("paper", recipe="paper")


def test_a_baseline_with_an_encoder_drops_it_and_has_no_depth_variants() -> None:
    """The encoder's depth is its own, so depth variants would repeat the baseline."""
    planned = {
        variant.name: variant
        for variant in plan_variants("all,encoder", "default", {**SMALL, "encoder": "resnet50"})
    }
    assert planned["encoder"].settings["encoder"] == "none"
    assert "encoder resnet50 → none" in planned["encoder"].description
    assert not {"depth_3", "depth_4", "depth_5"} & set(planned)
    assert planned["width_half"].settings["encoder"] == "resnet50"


def test_unknown_variants_are_named_with_the_known_ones() -> None:
    with pytest.raises(PipelineError, match=r"names no known variant \(dropout\); use all or"):
        plan_variants("skip,dropout", "default", SMALL)
    with pytest.raises(PipelineError, match="names no known variant"):
        plan_variants(" , ", "default", SMALL)
    with pytest.raises(PipelineError, match=r"optimisation \(all is every one but encoder\)"):
        plan_variants("skip,dropout", "default", SMALL)


def test_seeds() -> None:
    assert parse_seeds("1, 2,3,2") == [1, 2, 3]
    with pytest.raises(PipelineError, match="seeds='1,x' is not a comma-separated list"):
        parse_seeds("1,x")
    with pytest.raises(PipelineError, match="seeds is empty"):
        parse_seeds("")
