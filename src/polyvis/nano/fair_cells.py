"""The fair protocol's cells: each expert alone, each fusion over each encoder set, and each
expert's random-init twin alone, every one with a fresh fusion and adapter and the same LM.

A grid gives its cells as a product (`encoders` x `fusion`) or as a list (`cells`: each an
encoder set, its fusion when it has two or more, and optionally its own `train` values, e.g.
a learning rate the leaderboard chose on val), times each `adapter` either way; a listed cell
with an `adapter` of its own is built with that one only (e.g. the adapters on one fusion).

A random-init twin is the expert's architecture at random weights (its config.json as the
encoder's `config:`) read through the same image processor settings (size, mean, std): what the
expert's training, not its shape, adds. A blind cell (`grid.blind`) is the expert itself read with
`image_std` of BLIND_STD, so every image becomes the same input (the image at the processor's
mean, pixels of about 1e-10, features equal to float rounding): whatever it scores comes from
the questions and the answers' priors, not from any image. The sensitivity arm (`arm:
sensitivity`) gives the warm start (vary-nano's projector, with vary-nano's decoder as every
cell's LM) and the feature balance (`scales: auto`) to every cell that can take them, never to
some cells only.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyvis.config import ADAPTER_INIT_KEYS, SCALE_KEYS, TrainSection
from polyvis.errors import ConfigError

if TYPE_CHECKING:
    from polyvis.nano.fair_world import FairWorld


def typed(value: Any, field: str) -> dict[str, Any]:
    """A fusion / adapter given by name or as {type: ..., options}."""
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and "type" in value:
        return dict(value)
    raise ConfigError(field, f"expected a name or a mapping with 'type', got {value!r}")


def label(d: dict[str, Any]) -> str:
    extra = ",".join(f"{k}={v}" for k, v in d.items() if k != "type")
    return d["type"] + (f"({extra})" if extra else "")


def cell_name(encoders: list[str], fusion: dict[str, Any] | None) -> str:
    """A cell's name on the leaderboard: the expert alone, or the encoders and the fusion's label
    (e.g. "clip+dino+vary concat-channel(align=pool)")."""
    return "+".join(encoders) + (f" {label(fusion)}" if fusion else "")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", name).strip("_")


@dataclass
class Cell:
    name: str
    slug: str
    model: dict[str, Any]  # the model section of its runs
    baseline: bool  # a single pretrained expert: what the fusions are compared against
    meta: dict[str, Any] = field(default_factory=dict)  # encoders, fusion, adapter, ...
    train: dict[str, Any] = field(default_factory=dict)  # its own train values (grid.cells)
    source: str = ""  # where the grid lists it, for errors: "grid.cells[2]"


# image_std that turns every image into the same input: pixels within 1e-9 of the processor's
# mean, so the features of any two images differ by float rounding only (about 1e-7 of them)
BLIND_STD = 1.0e9


def blind_twin(enc: dict[str, Any]) -> dict[str, Any]:
    """The encoder entry of an expert read blind: its weights, every image the same input."""
    return {**copy.deepcopy(enc), "image_std": [BLIND_STD] * 3}


def random_twin(enc: dict[str, Any], where: str) -> dict[str, Any]:
    """The encoder entry of an expert's architecture at random weights, read like the expert."""
    path = Path(enc.get("path") or "")
    if not enc.get("path") or not (path / "config.json").is_file():
        raise ConfigError(where, f"{enc['name']}: a random-init twin needs a local checkpoint")
    proc_file = path / "preprocessor_config.json"
    proc = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
    twin = {k: v for k, v in enc.items() if k not in ("path", "revision", "config")}
    twin["config"] = json.loads((path / "config.json").read_text())
    size = proc.get("size") or {}
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    for key, value in (("image_size", side), ("image_mean", proc.get("image_mean")),
                       ("image_std", proc.get("image_std"))):  # fmt: skip
        if value is not None and key not in twin:
            twin[key] = value
    return twin


def _fresh(option: dict[str, Any], keys: tuple[str, ...], field: str) -> dict[str, Any]:
    given = [k for k in keys if k in option]
    if given:
        raise ConfigError(
            f"{field}.{given[0]}",
            "the fair protocol starts every fusion and adapter fresh; a warm start or feature "
            "scales go to every cell or none: the sensitivity arm (arm: sensitivity)",
        )
    return option


def plan_cells(spec: dict[str, Any], world: FairWorld) -> list[Cell]:
    """The cells of the ablation file's grid (see polyvis.nano.ablate): the listed `cells`, or
    the product of `encoders` and `fusion`; times each `adapter`, then each `controls` twin and
    each `blind` expert."""
    grid = spec.get("grid") or {}
    base = world.base["model"]
    entries = None if "cells" in grid else _product(grid, world)
    raw_a = grid.get("adapter", [base["adapter"]])
    adapters = [_fresh(typed(a, "grid.adapter"), ADAPTER_INIT_KEYS, "grid.adapter") for a in raw_a]
    if entries is None:
        entries = _listed(grid, spec, world)
    controls = grid.get("controls", [])
    _known(controls, "grid.controls", world)
    blind = grid.get("blind", [])
    _known(blind, "grid.blind", world)
    many = len(adapters) > 1
    cells = []
    for adapter in adapters:
        tail = f" | {label(adapter)}" if many else ""
        for names, fusion, train, source, own in entries:
            if own is None:
                cells.append(_entry_cell(names, fusion, train, source, adapter, tail, world))
        for n in controls:
            twin = random_twin(world.encoders[n], "grid.controls")
            cells.append(_cell(f"{n} (random init){tail}", [twin], None, adapter, world, False))
        for n in blind:
            enc = blind_twin(world.encoders[n])
            cells.append(_cell(f"{n} (blind){tail}", [enc], None, adapter, world, False))
    for names, fusion, train, source, own in entries:  # cells with an adapter of their own
        if own is not None:
            tail = f" | {label(own)}"
            cells.append(_entry_cell(names, fusion, train, source, own, tail, world))
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError("grid", f"cell {dup[0]!r} is listed twice")
    if world.arm["arm"] == "sensitivity":
        _check_sensitivity(cells, world.arm)
    return cells


def _entry_cell(
    names: list[str],
    fusion: dict[str, Any] | None,
    train: dict[str, Any],
    source: str,
    adapter: dict[str, Any],
    tail: str,
    world: FairWorld,
) -> Cell:
    encs = [world.encoders[n] for n in names]
    if fusion is None:  # one encoder: the expert alone, a baseline (not a variant of one)
        alone = names[0] not in world.variants
        cell = _cell(cell_name(names, None) + tail, encs, None, adapter, world, baseline=alone)
    else:
        cell = _cell(cell_name(names, fusion) + tail, encs, fusion, adapter, world, False)
    if train:
        cell.train, cell.meta["train"] = dict(train), dict(train)
    cell.source = source
    return cell


# (encoder names, fusion or None for one encoder, the cell's own train values, where it is
# listed, its own adapter or None for the grid's)
Entry = tuple[list[str], dict[str, Any] | None, dict[str, Any], str, dict[str, Any] | None]
CELL_KEYS = ("encoders", "fusion", "train", "adapter")
# train values every cell shares: the budget, the stages and the grid's seeds
SHARED_TRAIN = ("seed", "stage", "init_from", "max_steps", "batch_size", "grad_accum")


def _known(names: list[str], where: str, world: FairWorld) -> None:
    for n in names:
        if n not in world.encoders:
            raise ConfigError(
                where, f"unknown encoder {n!r}; the base has {', '.join(world.encoders)}"
            )


def _product(grid: dict[str, Any], world: FairWorld) -> list[Entry]:
    """grid.encoders x grid.fusion: a one-encoder set is one cell, a larger one a cell per fusion."""
    base = world.base["model"]
    raw_f = grid.get("fusion", [base["fusion"]])
    fusions = [
        _fresh(typed(f, "grid.fusion"), ("scales", *SCALE_KEYS), "grid.fusion") for f in raw_f
    ]
    sets = grid.get("encoders", [list(world.encoders)])
    for i, names in enumerate(sets):
        _known(names, f"grid.encoders[{i}]", world)
    entries: list[Entry] = []
    for i, names in enumerate(sets):
        where = f"grid.encoders[{i}]"
        if len(names) == 1:
            entries.append((names, None, {}, where, None))
        else:
            entries += [(names, fusion, {}, where, None) for fusion in fusions]
    return entries


def _listed(grid: dict[str, Any], spec: dict[str, Any], world: FairWorld) -> list[Entry]:
    """grid.cells: each {encoders: [...], fusion: ... (2+ encoders only), train: {...}}."""
    both = [k for k in ("encoders", "fusion") if k in grid]
    if both:
        raise ConfigError(
            f"grid.{both[0]}", "give the cells as a list (grid.cells) or as a product, not both"
        )
    raw = grid["cells"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "grid.cells", f"give a list of cells, e.g. [{{encoders: [clip]}}], got {raw!r}"
        )
    entries: list[Entry] = []
    for i, entry in enumerate(raw):
        where = f"grid.cells[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, f"expected a mapping with encoders, got {entry!r}")
        bad = sorted(set(entry) - set(CELL_KEYS))
        if bad:
            raise ConfigError(f"{where}.{bad[0]}", f"unknown field; valid: {', '.join(CELL_KEYS)}")
        names = entry.get("encoders")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.encoders", f"give a list of encoder names, got {names!r}")
        if len(set(names)) < len(names):
            raise ConfigError(f"{where}.encoders", f"{names} lists an encoder twice")
        _known(names, f"{where}.encoders", world)
        fusion = entry.get("fusion")
        if len(names) == 1 and fusion is not None:
            raise ConfigError(
                f"{where}.fusion", "one encoder has no fusion (it passes through); leave it out"
            )
        if len(names) > 1:
            if fusion is None:
                raise ConfigError(f"{where}.fusion", f"required for {len(names)} encoders")
            f = f"{where}.fusion"
            fusion = _fresh(typed(fusion, f), ("scales", *SCALE_KEYS), f)
        own = entry.get("adapter")
        if own is not None:
            a = f"{where}.adapter"
            own = _fresh(typed(own, a), ADAPTER_INIT_KEYS, a)
        train = _cell_train(entry.get("train"), where, spec)
        entries.append((names, fusion, train, where, own))
    return entries


def _cell_train(train: Any, where: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A listed cell's own train values: its one setting (none: the grid's `select`)."""
    if train is None:
        return {}
    where = f"{where}.train"
    if not isinstance(train, dict) or not train:
        raise ConfigError(where, f"give train values by key, e.g. {{lr: 0.001}}, got {train!r}")
    if spec.get("select") is not None:
        raise ConfigError(where, "give a cell's own train values or select, not both")
    for key in train:
        if key in SHARED_TRAIN:
            raise ConfigError(
                f"{where}.{key}", "the same for every cell (the budget, stages and seeds)"
            )
        if key not in TrainSection.model_fields:
            valid = ", ".join(k for k in TrainSection.model_fields if k not in SHARED_TRAIN)
            raise ConfigError(f"{where}.{key}", f"unknown train field; valid: {valid}")
    return dict(train)


def _cell(
    name: str,
    encoders: list[dict[str, Any]],
    fusion: dict[str, Any] | None,
    adapter: dict[str, Any],
    world: FairWorld,
    baseline: bool,
) -> Cell:
    model = {
        "encoders": copy.deepcopy(encoders),
        # one encoder: concat-channel passes its features through unchanged
        "fusion": dict(fusion or {"type": "concat-channel"}),
        "adapter": dict(adapter),
        "llm": copy.deepcopy(world.llm),
    }
    meta = {
        "encoders": [e["name"] for e in encoders],
        "fusion": label(fusion) if fusion else None,
        "adapter": label(adapter),
        "random_init": any("config" in e for e in encoders),
    }
    if any(e.get("image_std") == [BLIND_STD] * 3 for e in encoders):
        meta["blind"] = True
    if world.arm["arm"] == "sensitivity":
        meta.update(_sensitivity(model, world))
    return Cell(name, slug(name), model, baseline, meta)


def _sensitivity(model: dict[str, Any], world: FairWorld) -> dict[str, bool]:
    """The arm's starts, on `model` in place, and which it received: warm_lm (vary-nano's
    decoder as the LM: every cell), warm_start (the adapter from vary-nano's projector: the cells
    it fits), balanced (concat-channel scales)."""
    from polyvis.nano.world import projector_init

    arm, warm, balanced = world.arm, False, False
    if arm["warm_start"]:
        model["llm"] = copy.deepcopy(world.warm_lm)  # the LM the projector was trained into
        init = projector_init({"model": model})
        if init:
            model["adapter"] = {**model["adapter"], **init}
            warm = True
    fusion = model["fusion"]
    if arm["balance"] and fusion["type"] == "concat-channel" and len(model["encoders"]) >= 2:
        model["fusion"] = {**fusion, "scales": "auto", "scale_images": arm["balance_images"]}
        balanced = True
    return {"warm_lm": bool(arm["warm_start"]), "warm_start": warm, "balanced": balanced}


def _check_sensitivity(cells: list[Cell], arm: dict[str, Any]) -> None:
    if not (arm["warm_start"] or arm["balance"]):
        raise ConfigError("arm", "the sensitivity arm needs warm_start: true or balance: true")
    # warm_start always gives every cell vary-nano's decoder; only balance can find no taker
    if arm["balance"] and not any(c.meta["balanced"] for c in cells):
        raise ConfigError(
            "balance", "no cell can take it (it needs concat-channel over 2 or more encoders)"
        )
