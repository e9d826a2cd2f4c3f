"""A fair grid's cells listed one by one (`grid.cells`): the same cells, names and run folders as
the product form, each listed cell's own train values in its runs' configs, errors naming the
field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation
from polyvis.nano.fair_plan import plan_fair

BASE = {"nano": True, "quick": True, "grid": {"adapter": [{"type": "mlp", "depth": 2}]}}


def _spec(**grid) -> dict:
    return {**BASE, "grid": {**BASE["grid"], **grid}}


def _load(tmp_path: Path, spec: dict) -> dict:
    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_ablation(path)


def test_listed_cells_are_the_product_forms_cells(tmp_path: Path):
    product = plan_fair(
        _spec(encoders=[["clip"], ["clip", "dino"]], fusion=["add", "omnifusion"]), tmp_path / "a"
    )
    listed = plan_fair(
        _load(tmp_path, _spec(cells=[
            {"encoders": ["clip"]},
            {"encoders": ["clip", "dino"], "fusion": "add"},
            {"encoders": ["clip", "dino"], "fusion": {"type": "omnifusion"}},
        ])),
        tmp_path / "a",
    )  # fmt: skip
    names = ["clip", "clip+dino add", "clip+dino omnifusion"]
    assert [c.name for c in listed.cells] == [c.name for c in product.cells] == names
    for a, b in zip(listed.cells, product.cells):
        assert (a.slug, a.model, a.baseline, a.meta) == (b.slug, b.model, b.baseline, b.meta)
        assert a.train == {} and a.source.startswith("grid.cells[")
        # without train values or select, one default setting: the same run folder
        (sa,), (sb,) = listed.cell_settings(a), product.cell_settings(b)
        assert listed.run_dir(a, sa, 0) == product.run_dir(b, sb, 0)
    assert listed.run_dir(listed.cells[1], listed.settings[0], 0) == (
        tmp_path / "a" / "cells" / "clip_dino_add" / "default" / "seed-0"
    )


def test_a_listed_cells_train_values_reach_its_runs_and_only_its_own(tmp_path: Path):
    cells = [
        {"encoders": ["vary"], "train": {"lr": 0.003}},
        {"encoders": ["clip", "dino"], "fusion": "add", "train": {"lr": 0.0005, "weight_decay": 0.1}},
        {"encoders": ["clip", "dino", "vary"], "fusion": "concat-channel"},
    ]  # fmt: skip
    spec = _spec(cells=cells, seeds=[3, 4], adapter=["linear", {"type": "mlp", "depth": 2}])
    plan = plan_fair(_load(tmp_path, spec), tmp_path / "o")
    # times each adapter, named in the cell when there are several
    assert [c.name for c in plan.cells] == [
        "vary | linear", "clip+dino add | linear", "clip+dino+vary concat-channel | linear",
        "vary | mlp(depth=2)", "clip+dino add | mlp(depth=2)",
        "clip+dino+vary concat-channel | mlp(depth=2)",
    ]  # fmt: skip
    base_lr = plan.world.base["train"]["lr"]
    for cell, listed in zip(plan.cells, cells * 2):
        own = listed.get("train", {})
        assert cell.train == own and cell.meta.get("train") == (own or None)
        (setting,) = plan.cell_settings(cell)
        assert setting.values == own
        for seed in (3, 4):
            run = plan.spec(cell, setting, seed, "test")
            assert run.config.train.lr == own.get("lr", base_lr) and run.config.train.seed == seed
            assert run.config.train.weight_decay == own.get("weight_decay", 0.0)
            # the align stage keeps the cell's rate for the fusion and adapter too
            assert run.align.train.lr == run.config.train.lr
            assert run.out.parent.name == setting.slug and run.out.name == f"seed-{seed}"
    assert plan.run_dir(plan.cells[0], plan.cell_settings(plan.cells[0])[0], 3) == (
        tmp_path / "o" / "cells" / "vary_linear" / "lr-0.003" / "seed-3"
    )
    assert plan.cell_settings(plan.cells[1])[0].slug == "lr-0.0005_weight_decay-0.1"


TWO = {"encoders": ["clip", "dino"], "fusion": "add"}


def test_a_listed_cell_with_its_own_adapter_is_built_with_that_one_only(tmp_path: Path):
    cells = [
        {"encoders": ["clip"]},
        {"encoders": ["clip", "dino"], "fusion": "add", "adapter": "linear"},
        {"encoders": ["clip", "dino"], "fusion": "add", "adapter": {"type": "ldp", "pool_grid": 2}},
    ]  # fmt: skip
    plan = plan_fair(_load(tmp_path, _spec(cells=cells, controls=["clip"])), tmp_path / "o")
    names = [
        "clip",
        "clip (random init)",
        "clip+dino add | linear",
        "clip+dino add | ldp(pool_grid=2)",
    ]
    assert [c.name for c in plan.cells] == names
    adapters = [c.model["adapter"] for c in plan.cells]
    assert adapters[0] == adapters[1] == {"type": "mlp", "depth": 2}  # the grid's, one adapter
    assert adapters[2]["type"] == "linear" and adapters[3] == {"type": "ldp", "pool_grid": 2}
    assert [c.meta["adapter"] for c in plan.cells[2:]] == ["linear", "ldp(pool_grid=2)"]
    assert plan.cells[0].baseline and not plan.cells[2].baseline


@pytest.mark.parametrize(
    ("grid", "extra", "field", "words"),
    [
        ({"cells": []}, {}, "grid.cells", "give a list of cells"),
        ({"cells": [TWO, "clip"]}, {}, "grid.cells[1]", "expected a mapping"),
        ({"cells": [{"encoders": ["clip"], "colour": 1}]}, {}, "grid.cells[0].colour",
         "unknown field; valid: encoders, fusion, train, adapter"),
        ({"cells": [{"encoders": ["clip"], "adapter": {"type": "mlp", "init_from": "p"}}]}, {},
         "grid.cells[0].adapter.init_from", "sensitivity arm"),
        ({"cells": [{"fusion": "add"}]}, {}, "grid.cells[0].encoders", "list of encoder names"),
        ({"cells": [TWO, TWO, {"encoders": ["clip", "siglip"], "fusion": "add"}]}, {},
         "grid.cells[2].encoders", "unknown encoder 'siglip'"),
        ({"cells": [{"encoders": ["clip", "clip"], "fusion": "add"}]}, {},
         "grid.cells[0].encoders", "lists an encoder twice"),
        ({"cells": [{"encoders": ["clip"]}, {"encoders": ["clip", "dino"]}]}, {},
         "grid.cells[1].fusion", "required for 2 encoders"),
        ({"cells": [{"encoders": ["clip"], "fusion": "add"}]}, {}, "grid.cells[0].fusion",
         "one encoder has no fusion"),
        ({"cells": [{"encoders": ["clip", "dino"], "fusion": 3}]}, {}, "grid.cells[0].fusion",
         "a name or a mapping"),
        ({"cells": [{"encoders": ["clip", "dino"], "fusion": {"type": "concat-channel",
          "scales": "auto"}}]}, {}, "grid.cells[0].fusion.scales", "sensitivity arm"),
        ({"cells": [{"encoders": ["clip"], "train": 0.001}]}, {}, "grid.cells[0].train",
         "train values by key"),
        ({"cells": [{"encoders": ["clip"], "train": {"seed": 1}}]}, {},
         "grid.cells[0].train.seed", "the same for every cell"),
        ({"cells": [{"encoders": ["clip"], "train": {"max_steps": 9}}]}, {},
         "grid.cells[0].train.max_steps", "the same for every cell"),
        ({"cells": [{"encoders": ["clip"], "train": {"learning_rate": 1}}]}, {},
         "grid.cells[0].train.learning_rate", "unknown train field; valid: lr,"),
        ({"cells": [TWO, {"encoders": ["vary"], "train": {"lr": -1}}]}, {},
         "grid.cells[1].train.lr", "greater than 0"),
        ({"cells": [{"encoders": ["clip"], "train": {"lr": 1e-3}}]}, {"select": {"lr": [1e-3]}},
         "grid.cells[0].train", "or select, not both"),
        ({"cells": [TWO], "encoders": [["clip"]]}, {}, "grid.encoders", "not both"),
        ({"cells": [TWO, TWO]}, {}, "grid", "'clip+dino add' is listed twice"),
        ({"cells": [TWO]}, {"protocol": "none"}, "grid.cells", "unknown axis"),
    ],
)  # fmt: skip
def test_listed_cell_errors_name_their_field(
    tmp_path: Path, grid: dict, extra: dict, field: str, words: str
):
    with pytest.raises(ConfigError) as err:
        spec = _load(tmp_path, {**_spec(**grid), **extra})
        plan_fair(spec, tmp_path / "o")
    assert err.value.field == field and words in str(err.value), str(err.value)
