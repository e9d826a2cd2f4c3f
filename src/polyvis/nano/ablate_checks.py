"""The checks of an ablation file (`polyvis ablate`) made before anything trains: each grid axis
a list of valid values (every fusion and adapter against its registry), no empty axis and no
value twice, the base a valid polyvis config with its local checkpoints and records files there,
the eval section and its files, jobs; each a one-line ConfigError naming its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from polyvis.config import adapter_options, fusion_options, load_config
from polyvis.errors import ConfigError
from polyvis.nano.fair_cells import label as _label
from polyvis.nano.fair_cells import typed as _typed
from polyvis.nano.fair_world import int_at_least
from polyvis.options import resolve_typed
from polyvis.registry import registry

AXES = ("fusion", "adapter", "encoders", "seeds")
# the grid's axes that are plain lists, with an example for the error that says so
LIST_AXES = {"fusion": "[add, mul]", "adapter": "[mlp, linear]", "seeds": "[0, 1, 2]",
             "controls": "[clip, vary]", "blind": "[clip, vary]"}  # fmt: skip
ENCODER_SETS = "must be a list of encoder lists (e.g. [[clip], [clip, vary]])"
EVAL_KEYS = ("files", "limit")  # protocol: none (the fair protocol reads its own, fair_world)


def check_axes(grid: dict[str, Any]) -> None:
    """Each axis a list (a string would be read letter by letter), each encoder set a non-empty
    list of distinct names, each seed an integer: both protocols."""
    for axis, example in LIST_AXES.items():
        if axis in grid and not isinstance(grid[axis], list):
            raise ConfigError(f"grid.{axis}", f"must be a list (e.g. {example})")
    sets = grid.get("encoders", [])
    if not isinstance(sets, list) or not all(isinstance(names, list) for names in sets):
        raise ConfigError("grid.encoders", ENCODER_SETS)
    for i, names in enumerate(sets):
        where = f"grid.encoders[{i}]"
        if not names:
            raise ConfigError(where, "an empty encoder set: name one encoder or more")
        odd = [n for n in names if not isinstance(n, str)]
        if odd:
            raise ConfigError(where, f"encoder names are strings, got {odd[0]!r}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(where, f"lists {twice[0]!r} twice")
    for i, seed in enumerate(grid.get("seeds", [])):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"grid.seeds[{i}]", f"must be an integer, got {seed!r}")
        if seed < 0:  # else named as every run's train.seed
            raise ConfigError(f"grid.seeds[{i}]", f"must be 0 or more, got {seed}")


def base_config(src: Any) -> dict[str, Any]:
    """The ablation's `base` validated as a polyvis config (its errors named under `base`): a
    path gives its resolved config, an inline mapping itself (as given: its fusion and adapter
    name the runs), with the model's default fusion or adapter where it leaves them out."""
    if isinstance(src, (str, Path)):
        try:
            return load_config(src).model_dump(mode="json", exclude_none=True)
        except ConfigError as err:  # a missing file's message names it already
            raise ConfigError("base", f"{src}: {err}" if err.field else str(err)) from None
    if not isinstance(src, dict):
        raise ConfigError(
            "base", f"give a config file's path or the config inline (a mapping), got {src!r}"
        )
    try:
        resolved = load_config(src).model_dump(mode="json", exclude_none=True)
    except ConfigError as err:
        msg = err.message
        raise ConfigError(f"base.{err.field}" if err.field else "base", msg) from None
    base = copy.deepcopy(src)
    for key in ("fusion", "adapter"):
        base["model"].setdefault(key, resolved["model"][key])
    return base


def grid_values(grid: dict[str, Any], axis: str) -> list[dict[str, Any]]:
    """grid.fusion / grid.adapter as typed values, each checked on its own against its registry
    (`grid.fusion[1]: unknown fusion 'x'`): what is left for a cell to fail on is a pair that
    cannot be built together."""
    options = fusion_options if axis == "fusion" else adapter_options
    out = []
    for i, raw in enumerate(grid[axis]):
        where = f"grid.{axis}[{i}]"
        value = _typed(raw, where)
        try:
            resolve_typed(registry(axis), options(value), where)
        except ConfigError as err:
            if err.field != f"{where}.type":
                raise
            raise ConfigError(where, err.message) from None
        out.append(value)
    return out


def check_grid(grid: dict[str, Any]) -> None:
    """protocol: none: no empty axis (it would leave the grid without runs) and no value listed
    twice (two runs in one folder)."""
    for axis in AXES:
        if axis in grid and not grid[axis]:
            raise ConfigError(
                f"grid.{axis}", "empty: the grid would have no runs; list a value or leave it out"
            )
    keys = {
        "fusion": [_label(f) for f in grid_values(grid, "fusion")] if "fusion" in grid else [],
        "adapter": [_label(a) for a in grid_values(grid, "adapter")] if "adapter" in grid else [],
        "encoders": ["+".join(names) for names in grid.get("encoders", [])],
        "seeds": list(grid.get("seeds", [])),
    }
    for axis, seen in keys.items():
        for j, key in enumerate(seen):
            if key in seen[:j]:
                i = seen.index(key)
                raise ConfigError(f"grid.{axis}[{j}]", f"the same as grid.{axis}[{i}] ({key})")


def eval_section(spec: dict[str, Any]) -> dict[str, Any]:
    """protocol: none's `eval: {files: [...], limit: N}`, checked before anything trains."""
    ev = spec.get("eval") or {}
    if not isinstance(ev, dict):
        raise ConfigError("eval", f"give {{files: [...], limit: N}}, got {ev!r}")
    bad = sorted(set(ev) - set(EVAL_KEYS))
    if bad:
        raise ConfigError(f"eval.{bad[0]}", f"unknown field; valid: {', '.join(EVAL_KEYS)}")
    files = ev.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError("eval.files", f"give a list of records files, got {files!r}")
    limit = ev.get("limit")
    if limit is not None and not int_at_least(limit, 1):
        raise ConfigError("eval.limit", f"must be a positive integer, got {limit!r}")
    return ev


def check_base_paths(base: dict[str, Any], files: dict[str, list[Any]]) -> None:
    """A real base's local checkpoints (encoders, LM, tokenizer) and the records files a grid
    reads (`files`: their field, e.g. base.data.val, and paths) are there before the first run
    trains: a run's worker would fail only once the runs before it trained, and a missing test
    file only after every choice. A hub id (`org/name`) is left to the run to download."""
    from polyvis.models.load_checks import missing_local

    model = base.get("model") or {}
    llm = model.get("llm") or {}
    checkpoints = [
        (f"base.model.encoders[{i}].path", e.get("path"))
        for i, e in enumerate(model.get("encoders") or [])
    ]
    tokenizer = (llm.get("tokenizer") or {}).get("path")
    checkpoints += [("base.model.llm.path", llm.get("path"))]
    checkpoints += [("base.model.llm.tokenizer.path", tokenizer)]
    for where, path in checkpoints:
        missing = missing_local(where, str(path)) if path else None
        if missing is not None:
            raise missing
    check_records_files(files)


def check_eval_files(files: list[Path]) -> None:
    """Every held-out file is there before the first run trains (scoring comes last)."""
    check_records_files({"eval.files": files})


def check_records_files(files: dict[str, list[Any]]) -> None:
    """Each records file ({field: paths}) is a file: a missing one, or a folder, is one line
    naming `field[i]` (as a run's training would name it, after the runs before it)."""
    from polyvis.data.records import not_a_records_file

    for where, paths in files.items():
        for i, path in enumerate(paths):
            if not Path(path).is_file():
                raise ConfigError(f"{where}[{i}]", not_a_records_file(path))
