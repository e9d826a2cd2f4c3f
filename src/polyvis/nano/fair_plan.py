"""The fair protocol's plan (polyvis.nano.protocol): the `select` candidates, the cells, the
seeds and the world, each (cell, setting, seed) run's folder and config; and what a plan must
pass before anything trains (`check_before_training`)."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.config import SCALE_KEYS
from polyvis.errors import ConfigError
from polyvis.nano.ablate_checks import check_base_paths, grid_values
from polyvis.nano.fair_cells import SHARED_TRAIN, Cell, plan_cells
from polyvis.nano.fair_world import FairWorld, make_world
from polyvis.nano.runs import RunSpec, check_reused


@dataclass(frozen=True)
class Setting:
    """One `select` candidate: train-section values, e.g. {"lr": 0.001}."""

    values: dict[str, Any]

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values.items()) or "default"

    @property
    def slug(self) -> str:
        return self.label.replace("=", "-").replace(",", "_").replace("/", "-")


def candidates(select: Any) -> list[Setting]:
    """Every combination of the `select` values, in the order written."""
    if select is None:
        return [Setting({})]
    if not isinstance(select, dict) or not all(isinstance(v, list) and v for v in select.values()):
        raise ConfigError("select", "give candidate lists by train key, e.g. {lr: [1e-3, 3e-3]}")
    shared = [k for k in select if k in SHARED_TRAIN]
    if shared:  # candidates differ in how they learn, never in the budget they learn with
        raise ConfigError(
            f"select.{shared[0]}",
            "not a candidate: the same for every cell (the budget, stages and grid.seeds)",
        )
    keys = list(select)
    return [Setting(dict(zip(keys, combo))) for combo in itertools.product(*select.values())]


@dataclass
class FairPlan:
    """Everything the protocol runs: the world, the cells, the candidates and the seeds."""

    world: FairWorld
    cells: list[Cell]
    settings: list[Setting]
    seeds: list[int]
    root: Path  # the arm's folder: OUT, or OUT/sensitivity-...
    _tokens: dict[str, int] = field(default_factory=dict)  # image tokens per cell name

    def cell_settings(self, cell: Cell) -> list[Setting]:
        """The cell's candidates: its own train values when the grid lists them, else select's."""
        return [Setting(dict(cell.train))] if cell.train else self.settings

    def run_dir(self, cell: Cell, setting: Setting, seed: int) -> Path:
        return self.root / "cells" / cell.slug / setting.slug / f"seed-{seed}"

    def image_tokens(self, cell: Cell) -> int:
        """Visual tokens per image of the cell's model (built once per cell, in about a second)."""
        if cell.name not in self._tokens:
            from polyvis.config import load_config
            from polyvis.models.build import build_model, quiet_transformers

            model = copy.deepcopy(cell.model)  # scales change no token count; "auto" needs data
            model["fusion"] = {k: v for k, v in model["fusion"].items() if k not in SCALE_KEYS}
            model["fusion"].pop("scales", None)
            cfg = load_config({**copy.deepcopy(self.world.base), "model": model})
            from polyvis.nano.fair_variants import max_image_tokens

            with quiet_transformers():  # a tiled encoder's images: their most tokens
                self._tokens[cell.name] = max_image_tokens(build_model(cfg)[1])
        return self._tokens[cell.name]

    def spec(self, cell: Cell, setting: Setting, seed: int, split: str) -> RunSpec:
        """The run of (cell, setting, seed), scored on the val or the test questions."""
        w = self.world
        cfg = copy.deepcopy(w.base)
        cfg["model"] = copy.deepcopy(cell.model)
        cfg["train"] = {**cfg["train"], **setting.values, "seed": seed}
        if w.text_tokens is not None:
            cfg["data"] = {**cfg["data"], "max_length": self.image_tokens(cell) + 2 + w.text_tokens}
        files, limit = (
            (w.val_files, w.val_limit) if split == "val" else (w.test_files, w.test_limit)
        )
        return RunSpec.build(
            f"{cell.name} | {setting.label} | seed {seed}",
            cfg,
            self.run_dir(cell, setting, seed),
            files,
            limit,
            align=w.align,
            eval_dir=split,
        )


def plan_fair(spec: dict[str, Any], out: Path, progress: bool = False) -> FairPlan:
    """The world (data, experts, LM, val set), the cells and the candidates; trains nothing
    (`progress`: bars for the data and experts it builds)."""
    seeds = list((spec.get("grid") or {}).get("seeds", [0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("grid.seeds", f"give distinct seeds, got {seeds!r}")
    grid = spec.get("grid") or {}
    for axis in ("fusion", "adapter"):  # each named at its place in the grid, not as model.*
        if axis in grid:
            grid_values(grid, axis)
    settings = candidates(spec.get("select"))
    world = make_world(spec, out, progress)
    cells = plan_cells(spec, world)
    if not cells:  # e.g. no encoder set, or only sets of 2+ and no fusion: nothing to rank
        raise ConfigError("grid", "the grid has no cells: name an encoder set (and a fusion)")
    plan = FairPlan(world, cells, settings, seeds, world.root)
    for cell in cells:  # every candidate's config is valid before anything trains
        for setting in plan.cell_settings(cell):
            try:
                plan.spec(cell, setting, seeds[0], "val")
            except ConfigError as err:  # a value the grid gave this cell: name it there
                key, msg = err.field.removeprefix("train."), err.message
                if not cell.train and key in setting.values:  # a candidate of select
                    raise ConfigError(f"select.{key}", msg) from None
                if not cell.train or key not in cell.train:
                    raise
                raise ConfigError(f"{cell.source}.train.{key}", msg) from None
    return plan


def check_before_training(plan: FairPlan, spec: dict[str, Any]) -> None:
    """What would otherwise stop the grid only after runs trained (and after protocol.json was
    rewritten with a plan that is then refused): a real base's missing checkpoint or records
    file, a finished run trained with another config, or other cells or candidates than the
    choices already made in ROOT/selection.json."""
    w = plan.world
    if not spec.get("nano"):
        test = "eval.files" if "files" in (spec.get("eval") or {}) else "base.data.test"
        files = {"base.data.train": w.base["data"]["train"], "base.data.val": w.val_files}
        check_base_paths(w.base, {**files, test: w.test_files})
    for cell in plan.cells:
        for setting in plan.cell_settings(cell):
            for seed in plan.seeds:
                check_reused(plan.spec(cell, setting, seed, "val"))
    path = plan.root / "selection.json"
    if not path.is_file():
        return
    made = json.loads(path.read_text())
    again = "the choices must not change once made (start over with a new --out)"
    if made.get("seed") != plan.seeds[0]:
        raise ConfigError(
            "grid.seeds",
            f"the first seed is {plan.seeds[0]}; {path} chose at {made.get('seed')}: {again}",
        )
    names = [c.name for c in plan.cells]
    gone = [n for n in made["cells"] if n not in names]
    new = [n for n in names if n not in made["cells"]]
    if gone or new:
        what = f"cell {gone[0]!r} of {path} is not in the grid" if gone else (
            f"cell {new[0]!r} is not among the cells {path} chose for")  # fmt: skip
        raise ConfigError("grid", f"{what}: {again}")
    for cell in plan.cells:
        was = [c["setting"] for c in made["cells"][cell.name]["candidates"]]
        now = json.loads(json.dumps([s.values for s in plan.cell_settings(cell)]))
        if was != now:
            field = f"{cell.source}.train" if cell.train else "select"
            raise ConfigError(
                field, f"cell {cell.name}: candidates {now}, but {path} chose among {was}: {again}"
            )
