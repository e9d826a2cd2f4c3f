"""The fair protocol's cells: each expert alone, each fusion over each encoder set, and each
expert's random-init twin alone, every one with a fresh fusion and adapter and the same LM.

A random-init twin is the expert's architecture at random weights (its config.json as the
encoder's `config:`) read through the same image processor settings (size, mean, std): what the
expert's training, not its shape, adds. The sensitivity arm (`arm: sensitivity`) gives the warm
start (vary-nano's projector, with vary-nano's decoder as every cell's LM) and the feature
balance (`scales: auto`) to every cell that can take them, never to some cells only.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyvis.config import ADAPTER_INIT_KEYS, SCALE_KEYS
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


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", name).strip("_")


@dataclass
class Cell:
    name: str
    slug: str
    model: dict[str, Any]  # the model section of its runs
    baseline: bool  # a single pretrained expert: what the fusions are compared against
    meta: dict[str, Any] = field(default_factory=dict)  # encoders, fusion, adapter, ...


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
    """The cells of the ablation file's grid (see polyvis.nano.ablate)."""
    grid = spec.get("grid") or {}
    base = world.base["model"]
    raw_f = grid.get("fusion", [base["fusion"]])
    fusions = [
        _fresh(typed(f, "grid.fusion"), ("scales", *SCALE_KEYS), "grid.fusion") for f in raw_f
    ]
    raw_a = grid.get("adapter", [base["adapter"]])
    adapters = [_fresh(typed(a, "grid.adapter"), ADAPTER_INIT_KEYS, "grid.adapter") for a in raw_a]
    sets = grid.get("encoders", [list(world.encoders)])
    controls = grid.get("controls", [])
    for where, names in [*((f"grid.encoders[{i}]", s) for i, s in enumerate(sets)),
                         ("grid.controls", controls)]:  # fmt: skip
        for n in names:
            if n not in world.encoders:
                have = ", ".join(world.encoders)
                raise ConfigError(where, f"unknown encoder {n!r}; the base has {have}")
    many = len(adapters) > 1
    cells = []
    for adapter in adapters:
        tail = f" | {label(adapter)}" if many else ""
        for names in sets:
            if len(names) == 1:
                cells.append(_cell(names[0] + tail, [world.encoders[names[0]]], None, adapter,
                                   world, baseline=True))  # fmt: skip
                continue
            for fusion in fusions:
                encs = [world.encoders[n] for n in names]
                name = f"{'+'.join(names)} {label(fusion)}{tail}"
                cells.append(_cell(name, encs, fusion, adapter, world, baseline=False))
        for n in controls:
            twin = random_twin(world.encoders[n], "grid.controls")
            cells.append(_cell(f"{n} (random init){tail}", [twin], None, adapter, world, False))
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError("grid", f"cell {dup[0]!r} is listed twice")
    if world.arm["arm"] == "sensitivity":
        _check_sensitivity(cells, world.arm)
    return cells


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
    if world.arm["arm"] == "sensitivity":
        meta.update(_sensitivity(model, world))
    return Cell(name, slug(name), model, baseline, meta)


def _sensitivity(model: dict[str, Any], world: FairWorld) -> dict[str, bool]:
    """The arm's starts, on `model` in place: {"warm_start": .., "balanced": ..} it received."""
    from polyvis.nano.demo import projector_init

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
    return {"warm_start": warm, "balanced": balanced}


def _check_sensitivity(cells: list[Cell], arm: dict[str, Any]) -> None:
    if not (arm["warm_start"] or arm["balance"]):
        raise ConfigError("arm", "the sensitivity arm needs warm_start: true or balance: true")
    for key, got, need in (
        ("warm_start", "warm_start", "a linear adapter over concat-channel with vary's channels"),
        ("balance", "balanced", "concat-channel over 2 or more encoders"),
    ):
        if arm[key] and not any(c.meta[got] for c in cells):
            raise ConfigError(key, f"no cell can take it (it needs {need})")
