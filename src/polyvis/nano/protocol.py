"""The fair protocol of `polyvis ablate` (`protocol: fair`, the default for nano ablations).

1. Every cell starts the same way: a fresh fusion and adapter, an align stage with the LM
   frozen (`align_share` of the steps), then fine-tuning, with the same LM (nano: lm-nano, which
   read no expert's features) and the same budget.
2. Choices per cell on the val split only: every `select` candidate (e.g. `lr: [1e-3, 3e-3]`)
   trains at the first seed and is scored on the val questions; the best val mean is chosen.
3. Only then is the test set made (nano: generated from `test_data_seed`, which no choice and no
   training ever saw) and read: the chosen setting trains the other seeds, and every chosen run
   is scored on it.
4. The leaderboard (polyvis.eval.stats / leaderboard): CIs, comparisons against the best single
   expert, ranks, and each cell's cost (train seconds, FLOPs per step).

The cells (polyvis.nano.fair_cells) and the worlds (polyvis.nano.fair_world) are built first,
into a plan (polyvis.nano.fair_plan); every (cell, setting, seed) run has its own folder, so an
interrupted grid continues.

    OUT/protocol.json          the plan: data, val and test sets (folder, seed), budget, cells
    OUT/selection.json         val scores of every candidate and each cell's choice
    OUT/cells/CELL/SETTING/seed-S/{align,final,val,test}/, OUT/cells/CELL/flops.json
    OUT/leaderboard.{json,md,png}
The sensitivity arm (`arm: sensitivity`) writes the same under OUT/sensitivity-.../.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from polyvis.errors import PolyVisError
from polyvis.nano.fair_plan import FairPlan, Setting, check_before_training, plan_fair
from polyvis.nano.fork_server import RunServer
from polyvis.nano.runs import (
    Finished,
    RunSpec,
    family_scores,
    read_results,
    run_server,
    train_runs,
    train_seconds,
)
from polyvis.nano.wall import WallClock
from polyvis.nano.worker import FlopsStage
from polyvis.paths import write_json_atomic, write_text_atomic


def val_mean(run: RunSpec) -> tuple[float, dict[str, float]]:
    scores = family_scores(read_results(run))
    return statistics.fmean(scores.values()), scores


def select(plan: FairPlan, jobs: int, server: RunServer | None = None) -> dict[str, dict[str, Any]]:
    """Train every candidate of every cell at the first seed, score it on val, choose the best
    val mean (the first candidate on a tie); writes ROOT/selection.json."""
    runs = {
        (c.name, s.label): plan.spec(c, s, plan.seeds[0], "val")
        for c in plan.cells
        for s in plan.cell_settings(c)
    }
    print(f"selection: {len(runs)} runs ({len(plan.cells)} cells x {len(plan.settings)} "
          f"candidates, seed {plan.seeds[0]}), scored on val; finished ones are reused"
          if all(not c.train for c in plan.cells) else
          f"selection: {len(runs)} runs (each cell at its own setting, seed {plan.seeds[0]}), "
          "scored on val; finished ones are reused")  # fmt: skip
    train_runs(list(runs.values()), jobs=jobs, on_done=_done, server=server)
    out: dict[str, dict[str, Any]] = {}
    for cell in plan.cells:
        rows = []
        for s in plan.cell_settings(cell):
            mean, fams = val_mean(runs[cell.name, s.label])
            rows.append({"setting": s.values, "label": s.label, "val_mean": mean, "val": fams})
        best = max(range(len(rows)), key=lambda i: (rows[i]["val_mean"], -i))
        out[cell.name] = {"candidates": rows, "chosen": rows[best]["setting"]}
    record, path = {"seed": plan.seeds[0], "cells": out}, plan.root / "selection.json"
    if path.is_file():  # a resumed grid: its choices were made (and the test set maybe read)
        if json.loads(path.read_text()) != json.loads(json.dumps(record)):
            raise PolyVisError(
                f"{path}: the val scores now choose otherwise than recorded; the choices must "
                "not change once made (start over with a new --out)"
            )
        return out
    write_json_atomic(path, record)
    return out


def val_table(chosen: dict[str, dict[str, Any]]) -> str:
    """Every candidate's val scores (points), a row each, the chosen one marked with *."""
    rows = []
    for cell, record in chosen.items():
        for c in record["candidates"]:
            mark = "*" if c["setting"] == record["chosen"] else " "
            fams = " ".join(f"{f} {v:.1f}" for f, v in c["val"].items())
            rows.append(f"{mark} {cell} | {c['label']} | val mean {c['val_mean']:.1f} | {fams}")
    return "\n".join(rows)


def val_seeds(
    plan: FairPlan,
    chosen: dict[str, dict[str, Any]],
    jobs: int,
    server: RunServer | None = None,
) -> dict[str, Any]:
    """val_only with several seeds: each cell's chosen setting at every seed, scored on val (a
    pilot's spread over seeds, no test set); printed, and written to ROOT/val_seeds.json."""
    runs = chosen_runs(plan, chosen, "val")
    every = [r for cell_runs in runs.values() for r in cell_runs]
    print(f"val seeds: {len(every)} runs (each cell's choice at seeds {plan.seeds}), scored on val")
    train_runs(every, jobs=jobs, on_done=_done, server=server)
    out: dict[str, Any] = {}
    for cell in plan.cells:
        scores = [val_mean(run) for run in runs[cell.name]]
        means = [m for m, _ in scores]
        out[cell.name] = {
            "seeds": plan.seeds,
            "val_means": means,
            "mean": statistics.fmean(means),
            "sd": statistics.stdev(means),
            "families": {f: [fams[f] for _, fams in scores] for f in scores[0][1]},
        }
        each = ", ".join(f"{m:.1f}" for m in means)
        print(f"  {cell.name} | val mean {out[cell.name]['mean']:.1f}, sd "
              f"{out[cell.name]['sd']:.1f} (seeds {plan.seeds}: {each})")  # fmt: skip
    write_json_atomic(plan.root / "val_seeds.json", out)
    return out


def _done(finished: Finished) -> None:
    print(finished.line(), flush=True)


def chosen_runs(
    plan: FairPlan, chosen: dict[str, dict[str, Any]], split: str
) -> dict[str, list[RunSpec]]:
    """Per cell, the chosen setting's run at every seed (the first is the selection's, trained
    already), scored on the `split` questions."""
    return {
        cell.name: [
            plan.spec(cell, Setting(chosen[cell.name]["chosen"]), seed, split)
            for seed in plan.seeds
        ]
        for cell in plan.cells
    }


def final_runs(plan: FairPlan, chosen: dict[str, dict[str, Any]]) -> dict[str, list[RunSpec]]:
    """chosen_runs scored on the test set; the first seed's run also measures the FLOPs per
    step."""
    out = chosen_runs(plan, chosen, "test")
    for cell in plan.cells:
        first = out[cell.name][0]
        flops = plan.root / "cells" / cell.slug / "flops.json"
        first.after.append(FlopsStage(first.out / "final", first.config, flops))
    return out


def machine() -> str:
    """The OS, CPU count and model, and the vector instructions torch's CPU kernels use: fp32
    kernels of different instruction sets (AVX2, AVX-512) sum in different orders, so trained
    bytes, and the scores of a nano world built from scratch, are reproducible only on the same
    kind (docs/demo.md)."""
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}; torch kernels {kernels})"


def run_fair(
    spec: dict[str, Any],
    out: Path,
    command: str,
    notes: Sequence[str] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Plan, select on val, make the test set, train the other seeds, score on test, and write
    the leaderboard; returns its document. Wall time adds up over resumed invocations. `notes`
    (e.g. the demo's: one seed, a smoke test) open leaderboard.md and results.html; `progress`:
    bars for the data and experts the world builds."""
    plan = plan_fair(spec, out, progress)
    check_before_training(plan, spec)
    notes = [*notes, *world_notes(plan.world.info)]
    with (
        run_server() as server,
        WallClock(plan.root / "wall.json") as clock,
        _terminate_as_exit(),
    ):
        return _run(plan, spec, command, clock, notes, server)


def world_notes(info: dict[str, Any]) -> list[str]:
    """What a grid on another world than the leaderboard's says first (its experts' seed)."""
    seed = info.get("budget", {}).get("expert_seed")
    if not seed:
        return []
    return [
        f"Experts rebuilt at seed {seed} (expert_seed): another draw of the world's experts from "
        "the same recipes and data, so these are other models than the leaderboard's."
    ]


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler's stop) unwinds like Ctrl-C: the runs' workers are stopped
    and the wall clock is saved, so a resumed grid's wall time counts this invocation too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    plan: FairPlan,
    spec: dict[str, Any],
    command: str,
    wall: Any,
    notes: Sequence[str],
    server: RunServer | None,
) -> dict[str, Any]:
    from datetime import datetime, timezone

    from polyvis.eval.floor import floor_stats
    from polyvis.eval.leaderboard import write_leaderboard
    from polyvis.eval.stats import cell_scores, leaderboard, question_type_stats

    jobs = int(spec.get("jobs", 2))
    write_json_atomic(
        plan.root / "protocol.json", plan.world.describe(plan.settings, plan.seeds, plan.cells)
    )
    chosen = select(plan, jobs, server)
    if spec.get("val_only"):  # designing the world or the recipe: val scores, no test set
        print(val_table(chosen))
        seeds = val_seeds(plan, chosen, jobs, server) if len(plan.seeds) > 1 else None
        return {"val_only": True, "selection": chosen, **({"val_seeds": seeds} if seeds else {})}
    # every choice is made and written: only now is the test set made and read
    plan.world.make_test_set()
    write_json_atomic(
        plan.root / "protocol.json", plan.world.describe(plan.settings, plan.seeds, plan.cells)
    )
    finals = final_runs(plan, chosen)
    every = [r for runs in finals.values() for r in runs]
    n = len(plan.seeds)
    print(f"test: {len(every)} runs ({n} seed{'s' * (n > 1)} per cell), scored on the test set")
    train_runs(every, jobs=jobs, on_done=_done, server=server)
    cells = []
    for cell in plan.cells:
        runs = finals[cell.name]
        flops = json.loads((plan.root / "cells" / cell.slug / "flops.json").read_text())
        meta = {
            **cell.meta,
            "train_seconds": sum(train_seconds(r) for r in runs),
            "flops_per_step": flops["flops_per_step"],
            "selection": chosen[cell.name],
        }
        answers = {seed: r.out / "test" / "answers.jsonl" for seed, r in zip(plan.seeds, runs)}
        cells.append(cell_scores(cell.name, answers, meta))
    baselines = [c.name for c in plan.cells if c.baseline]
    stats = leaderboard(cells, baselines)
    stats["question_types"] = question_type_stats(
        {
            c.name: {
                s: r.out / "test" / "answers.jsonl" for s, r in zip(plan.seeds, finals[c.name])
            }
            for c in plan.cells
        }  # fmt: skip
    )
    # what answering by question type alone scores: chosen on a seed-0 run's val answers (every
    # run scores the same val and test items), then scored on test
    first = finals[plan.cells[0].name][0].out
    stats["floor"] = floor_stats(
        first / "val" / "answers.jsonl", first / "test" / "answers.jsonl", plan.root / "floor"
    )
    floor_types = question_type_stats({"floor": {0: Path(stats["floor"]["answers"])}})
    stats["question_types"]["floor"] = floor_types["cells"]["floor"]
    meta = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "wall_seconds": wall(),
        "protocol": plan.world.describe(plan.settings, plan.seeds, plan.cells),
    }
    doc = write_leaderboard(stats, plan.root / "leaderboard", meta)
    if notes:  # after the title, before the command and the table
        md = plan.root / "leaderboard.md"
        title, rest = md.read_text(encoding="utf-8").split("\n\n", 1)
        said = "".join(f"**{note}**\n\n" for note in notes)
        write_text_atomic(md, f"{title}\n\n{said}{rest}")
    from polyvis.eval.html import write_ablation_html

    write_ablation_html(
        plan.root / "results.html",
        leaderboard=doc,
        plot=plan.root / "leaderboard.png",
        answers={c.name: finals[c.name][0].out / "test" / "answers.jsonl" for c in plan.cells},
        notes=notes,
    )
    print(f"\nleaderboard: {plan.root / 'leaderboard.md'}, {plan.root / 'results.html'}")
    return doc
