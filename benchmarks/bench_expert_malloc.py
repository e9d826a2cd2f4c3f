"""One nano expert built twice at once, with freed memory kept and with glibc's malloc defaults.

Two one-thread processes start together, one per CPU core, with `POLYVIS_KEEP_FREED_MEMORY=1`
and `=0` (polyvis.malloc); each builds the same expert from the same settings and data into a
temporary folder and reports, every `--every` steps, the seconds and the minor page faults of
those steps. Both run under the same machine load, so the ratio of their times is the effect.
The first block holds the heap's growth and is shown apart. Stops after `--steps` steps.

    POLYVIS_CACHE=... .venv/bin/python benchmarks/bench_expert_malloc.py --expert clip-nano \
        [--steps 150 --every 50] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Enough(Exception):
    """Raised from the progress report once the worker has run its steps."""


def worker(spec: dict) -> None:
    from polyvis.malloc import keep_freed_memory

    kept = keep_freed_memory()
    import torch

    torch.set_num_threads(1)
    from polyvis.nano.experts import build_expert, resolve_data, resolve_settings

    name, quick = spec["expert"], spec["quick"]
    settings, data = resolve_settings(name, None, quick), resolve_data(None, name, quick)
    last = [time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

    def report(event: dict) -> None:
        if event.get("event") != "step" or event["step"] % spec["every"]:
            return
        now, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = {"step": event["step"], "seconds": now - last[0], "faults": faults - last[1]}
        print(json.dumps({"kept": kept, **block}), flush=True)
        last[0], last[1] = now, faults
        if event["step"] >= spec["steps"]:
            raise _Enough

    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(_Enough):
        build_expert(name, settings, data, Path(tmp) / name, report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--expert", default="clip-nano", help="clip-nano, vary-nano, dino-nano, lm-nano"
    )
    ap.add_argument("--steps", type=int, default=150, help="steps each build runs")
    ap.add_argument("--every", type=int, default=50, help="steps per reported block")
    ap.add_argument("--quick", action="store_true", help="the quick experts' settings")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    from polyvis.nano.expert_specs import EXPERTS
    from polyvis.nano.experts import data_dirs, resolve_data

    if args.expert not in EXPERTS:
        ap.error(f"unknown expert {args.expert!r}; valid: {', '.join(EXPERTS)}")
    # the data first, once, so that neither build generates it while the other trains
    data_dirs(resolve_data(None, args.expert, args.quick))
    spec = {"expert": args.expert, "quick": args.quick, "steps": args.steps, "every": args.every}
    procs = {}
    for keep in ("1", "0"):
        env = {**os.environ, "POLYVIS_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        procs[keep] = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    blocks = {}
    for keep, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            sys.exit(f"the build with POLYVIS_KEEP_FREED_MEMORY={keep} failed ({proc.returncode})")
        blocks[keep] = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    print(
        f"# {args.expert}{' (quick)' if args.quick else ''}: two builds at once, one thread each\n"
    )
    print(
        "| steps | kept: s | kept: faults/step | defaults: s | defaults: faults/step "
        "| kept / defaults (time) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for a, b in zip(blocks["1"], blocks["0"]):
        steps = f"{a['step'] - args.every + 1}-{a['step']}"
        print(f"| {steps} | {a['seconds']:.1f} | {a['faults'] / args.every:.0f} | "
              f"{b['seconds']:.1f} | {b['faults'] / args.every:.0f} | "
              f"{a['seconds'] / b['seconds']:.3f} |")  # fmt: skip
    later = [(a["seconds"], b["seconds"]) for a, b in zip(blocks["1"][1:], blocks["0"][1:])]
    if later:
        ratio = sum(a for a, _ in later) / sum(b for _, b in later)
        print(f"\nafter the first block: kept takes {ratio:.3f} of the defaults' time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
