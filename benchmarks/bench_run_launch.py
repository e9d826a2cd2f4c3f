"""Launching a grid's runs: a Python process each, against forks of one run server.

`polyvis.nano.runs.train_runs` runs every nano run (training, then scoring) in a process of its
own. By default (Linux) it forks them from a server that imported torch and transformers once
(`polyvis.nano.fork_server`); `fork=False` starts `python -m polyvis.nano.worker` for each.
This trains the same small grid both ways in turn (`--runs` runs of configs/nano-tiny.yaml at
different seeds, `--jobs` at a time, each scored on a few records), times each grid on the wall
clock and the CPU clock of every process it started, and checks that both ways give the same
weights and answers. Small runs are where the imports count: a quick demo's runs train for a
second or two each.

    .venv/bin/python benchmarks/bench_run_launch.py [--runs 6] [--jobs 2] [--steps 10] \
        [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _records(folder: Path) -> Path:
    from PIL import Image

    rows = []
    for i, colour in enumerate(
        ("white", "red", "blue", "green", "black", "yellow", "grey", "pink")
    ):
        Image.new("RGB", (64, 64), colour).save(folder / f"{colour}.png")
        qa = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": colour}]
        rows.append({"id": str(i), "image": f"{colour}.png", "conversations": qa})
    path = folder / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6, help="runs in the grid (seeds 0..N-1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--steps", type=int, default=10, help="training steps of each run")
    ap.add_argument("--repeats", type=int, default=2, help="grids of each kind, alternating")
    args = ap.parse_args(argv)

    from polyvis.config import load_config
    from polyvis.nano.runs import RunSpec, train_runs

    tiny = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(
        mode="json", exclude_none=True
    )
    kinds = {"a process each": False, "forked": True}
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    same = True
    with tempfile.TemporaryDirectory(prefix="bench-run-launch-") as tmp:
        records = _records(Path(tmp))
        for repeat in range(args.repeats):
            outputs: dict[str, list[bytes]] = {}
            for kind, fork in kinds.items():
                specs = []
                for seed in range(args.runs):
                    cfg = {
                        "model": tiny["model"],
                        "data": {"train": [str(records)], "max_length": 256},
                        "train": {"stage": "finetune", "max_steps": args.steps, "lr": 1e-3,
                                  "seed": seed, "batch_size": 4},
                    }  # fmt: skip
                    out = Path(tmp) / f"{repeat}-{fork}" / f"seed-{seed}"
                    specs.append(RunSpec.build(f"seed {seed}", cfg, out, [records], eval_limit=8))
                cpu0, start = _children_cpu(), time.perf_counter()
                train_runs(specs, jobs=args.jobs, fork=fork)
                wall[kind].append(time.perf_counter() - start)
                cpu[kind].append(_children_cpu() - cpu0)
                outputs[kind] = [
                    (s.out / name).read_bytes()
                    for s in specs
                    for name in ("final/model.safetensors", "eval/answers.jsonl")
                ]
            same = same and len(set(map(tuple, outputs.values()))) == 1

    print(
        f"{args.runs} runs of {args.steps} steps, {args.jobs} at a time, {args.repeats} grids each"
    )
    print("| launch | grid wall s (median) | CPU s of its processes (median) |")
    print("|---|---:|---:|")
    for kind in kinds:
        print(
            f"| {kind} | {statistics.median(wall[kind]):.1f} | {statistics.median(cpu[kind]):.1f} |"
        )
    base, fork = "a process each", "forked"
    print(f"forked / a process each: wall {statistics.median(wall[fork]) / statistics.median(wall[base]):.2f}x, "
          f"CPU {statistics.median(cpu[fork]) / statistics.median(cpu[base]):.2f}x")  # fmt: skip
    print(f"weights and answers identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
