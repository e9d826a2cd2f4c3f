"""`polyvis demo`: the fair protocol of `polyvis ablate` (polyvis.nano.protocol) in small.

One seed, each expert alone (clip-nano, vary-nano, dino-nano) and the leaderboard's best fusions
(budget.DEMO_CELLS), each at the learning rate it chose on val there: every cell a fresh fusion
and the leaderboard's adapter on lm-nano, an align stage then fine-tuning with the same budget,
scored on the val questions and then on a fresh test set (data seed 1). It writes what
`polyvis ablate` writes (OUT/leaderboard.{json,md,png}, OUT/results.html) and prints each cell's
family scores with the 95 % CI over test items of its one seed; the answer with CIs over seeds
is the leaderboard's (docs/leaderboard.md). The world it runs in is polyvis.nano.world's.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from polyvis.nano.budget import BUDGET, DEMO_ADAPTER, DEMO_CELLS, QUICK_BUDGET
from polyvis.nano.world import prepare_world


def demo_spec(
    quick: bool = False, jobs: int = 2, seed: int = 0, precision: str = "fp32"
) -> dict[str, Any]:
    """The demo as an ablation file: the leaderboard's protocol at one seed over DEMO_CELLS."""
    return {
        "nano": True,
        "protocol": "fair",
        "quick": quick,
        "grid": {
            "cells": copy.deepcopy(DEMO_CELLS),
            "adapter": [dict(DEMO_ADAPTER)],
            "seeds": [seed],
        },
        "jobs": jobs,
        **({"precision": precision} if precision != "fp32" else {}),
    }


def run_demo(
    out: str | Path,
    quick: bool = False,
    jobs: int = 2,
    seed: int = 0,
    progress: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Run the demo into `out` (resumable: finished runs are reused); returns the leaderboard
    document of its cells (polyvis.nano.protocol.run_fair)."""
    from polyvis.nano.demo_report import demo_notes, print_summary, start_banner
    from polyvis.nano.experts import EXPERTS
    from polyvis.nano.protocol import run_fair

    out = Path(out)
    start = time.perf_counter()
    spec = demo_spec(quick, jobs, seed, precision)
    budget = {**(QUICK_BUDGET if quick else BUDGET), "precision": precision}
    print(start_banner(spec, budget))
    # readied here first, for the numbered steps it prints; the protocol then finds it cached
    prepare_world(out, budget, quick, 0, jobs, progress, log=print, experts=EXPERTS)
    print(f"[3/4] {len(DEMO_CELLS)} runs, {jobs} at a time, each scored on the val questions, "
          "then on a fresh test set (data seed 1) made once every run is chosen")  # fmt: skip
    command = f"polyvis demo --out {out}" + (" --quick" if quick else "") + f" --seed {seed}"
    command += f" --precision {precision}" if precision != "fp32" else ""
    doc = run_fair(spec, out, command, notes=demo_notes(quick, budget, seed), progress=progress)
    print("[4/4] results")
    print_summary(doc, out, quick, budget, seed, time.perf_counter() - start)
    return doc
