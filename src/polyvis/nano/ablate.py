"""`polyvis ablate`: a grid over fusion methods x adapters x encoder sets x seeds, same budget.

The ablation file:

    nano: true                  # base = the demo's nano setup (experts, data, tiny LM); or
    base: x.yaml                # a polyvis config (a path, or the config inline); a
                                # relative path is from this file's folder
    protocol: fair              # nano's default (polyvis.nano.protocol); `none` for base's
    quick: false                # nano only: the smallest budget
    grid:
      fusion: [concat-channel, omnifusion]          # names or {type: ..., options}
      adapter: [mlp, {type: ldp, pool_grid: 4}]
      encoders: [[clip], [vary], [clip, vary]]      # subsets of the base's encoders, by name
      controls: [clip, vary]    # fair: each expert's random-init twin alone
      blind: [clip]             # fair: each expert read blind (every image the same input)
      seeds: [0, 1, 2]
    jobs: 2

A fair grid may list its cells instead of `encoders` x `fusion`, each with its own train values
(its one setting, without `select`), as `polyvis demo` does:

    grid:
      cells: [{encoders: [clip]}, {encoders: [clip, dino], fusion: add, train: {lr: 0.003}}]

`protocol: fair` (docs/protocol.md): a one-encoder set is one cell (the
expert alone), a set of 2+ is one cell per fusion; every cell starts fresh, aligns for
`align_share` of the steps (default 0.2), trains with the same LM, picks its `select`
candidates ({lr: [1e-3, 3e-3]}) on val at the first seed, then runs every seed and is scored on
a fresh test set (`test_data_seed`, default 1; `test_images` per family, default 400;
`eval: {val_limit, test_limit}`). `arm: sensitivity` with `warm_start` / `balance` gives every
cell the warm start / the feature scales. Writes OUT/leaderboard.{json,md,png}.

`protocol: none` (today's grid, the default with `base:`): every fusion x adapter x encoder set
x seed, scored on `eval: {files: [...], limit: 200}` (nano: the demo's test sets), with
`align: {train: {max_steps: 300}, data: {train: [...]}}`, an align stage (LLM frozen) whose
sections are merged over the run's (nano: the demo's), and the demo's projector start and
scales. Writes OUT/ablation.json, OUT/ablation.md (mean ± std over seeds; with one seed, its
score and `(n=1)`) and OUT/ablation.png.

Every run trains in its own directory, so a half-finished grid resumes where it stopped. A
mistake in the file (a grid value, the base, an eval file, jobs) is an error before anything
trains; a cell whose fusion, adapter and encoders cannot be built together is skipped with a
printed line.
"""

from __future__ import annotations

import copy
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from polyvis.config_files import read_yaml_mapping
from polyvis.errors import ConfigError
from polyvis.eval.html_tables import mean_spread
from polyvis.nano.ablate_checks import (
    AXES,
    base_config,
    check_axes,
    check_base_paths,
    check_eval_files,
    check_grid,
    eval_section,
    grid_values,
)
from polyvis.nano.fair_cells import label as _label
from polyvis.nano.fair_cells import typed as _typed
from polyvis.nano.fair_world import int_at_least
from polyvis.nano.runs import RunSpec, family_scores, read_results, train_runs
from polyvis.nano.world import nano_config

KEYS = ("nano", "base", "quick", "grid", "eval", "jobs", "align", "protocol")
# the fair protocol's own keys (polyvis.nano.protocol); `align` is its align_share there
FAIR_KEYS = ("select", "test_data_seed", "test_images", "align_share", "arm", "warm_start",
             "balance", "families", "variants", "val_only",
             "difficulty", "steps", "precision", "expert_seed")  # fmt: skip


def protocol_of(spec: dict[str, Any]) -> str:
    """`fair` (the default for nano ablations) or `none` (the default with a base config)."""
    return spec.get("protocol", "fair" if spec.get("nano") else "none")


def load_ablation(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    spec = read_yaml_mapping(path, "ablation file")
    unknown = set(spec) - set(KEYS) - set(FAIR_KEYS)
    if unknown:
        valid = ", ".join(KEYS + FAIR_KEYS)
        raise ConfigError(sorted(unknown)[0], f"unknown field; valid: {valid}")
    if not spec.get("nano") and "base" not in spec:
        raise ConfigError("base", "give a base config (path or mapping), or nano: true")
    jobs = spec.get("jobs", 2)
    if not int_at_least(jobs, 1):  # 0 would wait forever for a free slot
        raise ConfigError("jobs", f"must be a positive integer (runs at a time), got {jobs!r}")
    protocol = protocol_of(spec)
    if protocol not in ("fair", "none"):
        raise ConfigError("protocol", f"must be fair or none, got {protocol!r}")
    fair = protocol == "fair"
    wrong = (
        [k for k in FAIR_KEYS if k in spec] if not fair else [k for k in ("align",) if k in spec]
    )
    if wrong:
        why = "only with protocol: fair" if not fair else "set by the fair protocol (align_share)"
        raise ConfigError(wrong[0], why)
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(
            "grid", f"give the axes by name, e.g. {{fusion: [add, mul]}}, got {grid!r}"
        )
    axes = AXES + (("controls", "blind", "cells") if fair else ())
    bad = set(grid) - set(axes)
    if bad:
        raise ConfigError(f"grid.{sorted(bad)[0]}", f"unknown axis; valid: {', '.join(axes)}")
    check_axes(grid)
    if not spec.get("nano"):  # nano: true makes its own base (the demo's)
        spec["base"] = _base_path(spec["base"], path.parent)
        base_config(spec["base"])  # its mistakes named now, not as a KeyError in the grid
    return spec


def _base_path(src: Any, folder: Path) -> Any:
    """A `base:` path as the file means it: relative to the ablation file's folder (not to where
    polyvis runs), `~` expanded; an inline config (a mapping) as it is."""
    if not isinstance(src, str):
        return src
    return str(folder / Path(src).expanduser())  # an absolute path replaces the folder


def _nano_base(
    spec: dict[str, Any], out: Path, progress: bool = False
) -> tuple[dict[str, Any], list[Path], int | None, dict[str, Any] | None, dict[str, Any]]:
    from polyvis.nano import budget as nano_budget
    from polyvis.nano import world as nano_world

    quick = bool(spec.get("quick"))
    budget = dict(nano_budget.QUICK_BUDGET if quick else nano_budget.BUDGET)
    world = nano_world.prepare_world(
        out, budget, quick, workers=int(spec.get("jobs", 2)), progress=progress
    )
    base = nano_world.run_config(
        ["clip", "vary"], "concat-channel", world.experts, world.train, world.corpus, budget,
        quick, 0,
    )  # fmt: skip
    return base, world.test, budget["eval_limit"], nano_world.align_stage(budget), budget


def plan(spec: dict[str, Any], out: Path, progress: bool = False) -> list[tuple[str, int, RunSpec]]:
    """Every (cell, seed) run of the grid, with its config. A cell whose values cannot be built
    together (e.g. a fusion and an adapter) is skipped with a printed line; any other mistake
    is a ConfigError, before the nano world is made."""
    grid = spec.get("grid") or {}
    check_axes(grid)  # again: plan may be given a spec that load_ablation did not read
    check_grid(grid)
    ev = eval_section(spec)
    budget = None  # nano: the demo's budget, for the runs' projector start and encoder scales
    if spec.get("nano"):
        base, eval_files, limit, align, budget = _nano_base(spec, out, progress)
    else:
        base = base_config(spec["base"])
        eval_files, limit, align = [], None, None
    align = spec.get("align", align)
    if align is not None and not isinstance(align, dict):
        raise ConfigError(
            "align", "give the align stage's config sections, e.g. {train: {max_steps: 300}}"
        )
    eval_files = [Path(f) for f in ev.get("files", eval_files)]
    if not eval_files:
        raise ConfigError("eval.files", "no held-out records files to evaluate on")
    limit = ev.get("limit", limit)
    by_name = {e["name"]: e for e in base["model"]["encoders"]}
    fusions = (
        grid_values(grid, "fusion") if "fusion" in grid else [_typed(base["model"]["fusion"], "")]
    )
    adapters = (
        grid_values(grid, "adapter")
        if "adapter" in grid
        else [_typed(base["model"]["adapter"], "")]
    )
    enc_sets = grid.get("encoders", [list(by_name)])
    for i, names in enumerate(enc_sets):
        for n in names:
            if n not in by_name:
                raise ConfigError(
                    f"grid.encoders[{i}]",
                    f"unknown encoder {n!r}; the base has {', '.join(by_name)}",
                )
    seeds = grid.get("seeds", [0])
    runs = []
    for fusion, adapter, names, seed in itertools.product(fusions, adapters, enc_sets, seeds):
        cfg = copy.deepcopy(base)
        cfg["model"]["fusion"], cfg["model"]["adapter"] = fusion, adapter
        cfg["model"]["encoders"] = [by_name[n] for n in names]
        cfg.setdefault("train", {})["seed"] = seed
        cell = f"{'+'.join(names)} | {_label(fusion)} | {_label(adapter)}"
        if budget is not None:
            cfg = nano_config(cfg, budget)
        slug = (
            "_".join([*names, _label(fusion), _label(adapter)]).replace("/", "-").replace(" ", "")
        )
        try:
            run = RunSpec.build(
                f"{cell} | seed {seed}",
                cfg,
                out / "cells" / slug / f"seed-{seed}",
                eval_files,
                limit,
                align=align,
            )
        except ConfigError as err:
            # each value was checked on its own above, and the base and seeds are valid: a
            # model.fusion / model.adapter error here is a pair of them (fusion and adapter, or
            # either and the encoder set) that cannot be built together. Anything else, the
            # align section's mistakes among them, would fail every cell: an error.
            if not err.field.startswith(("model.fusion", "model.adapter")):
                raise
            print(f"skipping {cell}: {err}")
            continue
        runs.append((cell, seed, run))
    if not runs:
        raise ConfigError("grid", "the grid has no runs: no cell can be built (see above)")
    return runs


def run_ablation(
    path: str | Path, out: str | Path, command: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Run the ablation file's grid into `out` (resumable); returns the leaderboard document
    (protocol: fair) or the ablation summary (protocol: none). `progress`: bars for the nano
    world's data and experts when they are built (the first grid on an empty cache: minutes)."""
    out = Path(out)
    spec = load_ablation(path)
    if protocol_of(spec) == "fair":
        from polyvis.nano.protocol import run_fair

        return run_fair(
            spec, out, command or f"polyvis ablate {path} --out {out}", progress=progress
        )
    runs = plan(spec, out, progress)
    check_eval_files(runs[0][2].eval_files)  # every run scores on the same files
    if not spec.get("nano"):  # the nano world's files and experts are made by plan
        base = base_config(spec["base"])
        check_base_paths(base, _data_files(base, spec.get("align")))
    print(f"{len(runs)} runs ({len({c for c, _, _ in runs})} cells); finished ones are reused")
    train_runs(
        [r for _, _, r in runs],
        jobs=int(spec.get("jobs", 2)),
        on_done=lambda f: print(f.line(), flush=True),
    )
    cells: dict[str, list[dict[str, float]]] = {}
    for cell, _seed, run in runs:
        scores = family_scores(read_results(run))
        scores["mean"] = sum(scores.values()) / max(1, len(scores))
        cells.setdefault(cell, []).append(scores)
    summary = {cell: _mean_std(rows) for cell, rows in cells.items()}
    result = {"cells": summary, "runs": len(runs)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    table = _table(summary)
    (out / "ablation.md").write_text(f"# Ablation (points, {_what(summary)})\n\n" + table + "\n")
    _plot(summary, out / "ablation.png")
    from polyvis.eval.html import write_ablation_html

    first_seed: dict[str, Path] = {}
    for cell, _seed, run in runs:
        first_seed.setdefault(cell, run.out / run.eval_dir / "answers.jsonl")
    write_ablation_html(
        out / "results.html", summary=summary, plot=out / "ablation.png", answers=first_seed
    )
    print("\n" + table)
    return result


def _data_files(base: dict[str, Any], align: Any) -> dict[str, list[Any]]:
    """The records files protocol: none's runs read besides eval.files: the base's and the align
    stage's."""
    data, train = base.get("data") or {}, base.get("train") or {}
    align = (align or {}).get("data") or {}
    files = {"base.data.train": list(data.get("train") or [])}
    if train.get("eval_every"):  # the runs read val only to evaluate while they train
        files["base.data.val"] = list(data.get("val") or [])
    return {**files, "align.data.train": list(align.get("train") or [])}


def _mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {
        k: {
            "mean": statistics.fmean(r[k] for r in rows),
            "std": statistics.stdev([r[k] for r in rows]) if len(rows) > 1 else 0.0,
            "n": len(rows),
        }
        for k in keys
    }


def _spread(summary: dict[str, dict[str, dict[str, float]]]) -> bool:
    """Whether any cell has two seeds or more (a std to show)."""
    return any(s["mean"]["n"] > 1 for s in summary.values())


def _what(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """What the table's numbers are: mean ± std over seeds, or one seed's score."""
    return "mean ± std over seeds" if _spread(summary) else "one seed per cell, no spread"


def _table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    cols = list(next(iter(summary.values())))
    lines = [
        "| encoders | fusion | adapter | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---:|" * len(cols),
    ]
    for cell, stats in sorted(summary.items(), key=lambda kv: -kv[1]["mean"]["mean"]):
        vals = [mean_spread(stats[c]) for c in cols]
        lines.append(
            "| " + " | ".join(p.strip() for p in cell.split("|")) + " | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines)


def _plot(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = sorted(summary, key=lambda c: -summary[c]["mean"]["mean"])
    fig = Figure(figsize=(max(5, 0.6 * len(cells) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(
        range(len(cells)),
        [summary[c]["mean"]["mean"] for c in cells],
        # one seed: no error bars (a cap at the mean would read as a spread of 0)
        yerr=[summary[c]["mean"]["std"] for c in cells] if _spread(summary) else None,
        capsize=3,
    )
    ax.set_xticks(range(len(cells)), [c.replace(" | ", "\n") for c in cells], fontsize=6)
    ax.set_ylabel("mean score (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
