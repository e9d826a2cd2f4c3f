"""Nano expert builds in float32 and in bf16 (`precision: bf16`), side by side: time and quality.

For each expert, two one-thread processes build it at the same moment into the same fresh cache,
one per precision, so the machine's load falls on both alike; the table gives each build's wall
and CPU seconds, their ratio, and the expert's own held-out figures from expert.json (clip-nano:
retrieval top-1; vary-nano: character accuracy per family; dino-nano: masked reconstruction MSE;
lm-nano: val loss). The synthetic data is generated once first, outside the timing.

    .venv/bin/python benchmarks/bench_expert_precision.py [--experts clip-nano dino-nano ...]
        [--quick] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS = ("fp32", "bf16")


def build(name: str, precision: str, quick: bool) -> None:
    """The worker: build one expert at one precision (cached in $POLYVIS_CACHE)."""
    import torch

    torch.set_num_threads(1)
    from polyvis.nano.experts import ensure_experts

    settings = {name: {"precision": precision}}
    out = ensure_experts(settings=settings, quick=quick, progress=False, parallel=False,
                         names=[name])  # fmt: skip
    print(json.dumps({"dir": str(out[name])}))


def summary(name: str, info: dict) -> str:
    ev = info["eval"]
    if name == "clip-nano":
        r = ev["retrieval"]
        return (
            f"retrieval top-1 i→t {r['image_to_text_top1']:.3f}, t→i {r['text_to_image_top1']:.3f}"
        )
    if name == "dino-nano":
        return f"masked MSE {ev['reconstruction']['masked_mse']:.3f}"
    if name == "lm-nano":
        return f"val loss {ev['val']['loss']:.4f}"
    accs = {
        k: v["char_accuracy"] for k, v in ev.items() if isinstance(v, dict) and "char_accuracy" in v
    }
    return "char accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(accs.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", nargs="+",
                        default=["clip-nano", "dino-nano", "vary-nano", "lm-nano"])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the quick experts (a smoke test)")
    parser.add_argument("--cache", help="POLYVIS_CACHE for the builds (default: a new folder)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, precision, quick = args.worker
        build(name, precision, quick == "1")
        return 0

    cache = Path(args.cache or tempfile.mkdtemp(prefix="bench-expert-precision-"))
    env = dict(os.environ, POLYVIS_CACHE=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")  # fmt: skip
    from polyvis.nano.experts import data_dirs as make_data
    from polyvis.nano.experts import resolve_data

    os.environ["POLYVIS_CACHE"] = str(cache)
    for name in args.experts:  # the data first, untimed
        make_data(resolve_data(None, name, args.quick))

    rows = []
    for name in args.experts:
        procs, start = {}, time.perf_counter()
        for p in PRECISIONS:
            cmd = [sys.executable, __file__, "--worker", name, p, "1" if args.quick else "0"]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
            procs[proc.pid] = (p, proc)
        result = {}
        while len(result) < len(procs):  # whichever ends first: each build's own wall time
            pid, status, usage = os.wait4(-1, 0)
            if pid not in procs:
                continue
            p, proc = procs[pid]
            wall = time.perf_counter() - start
            if status != 0:
                sys.exit(f"{name} ({p}) failed: exit status {status}")
            line = [x for x in proc.stdout.read().splitlines() if x.startswith("{")][-1]
            info = json.loads((Path(json.loads(line)["dir"]) / "expert.json").read_text())
            result[p] = (wall, usage.ru_utime + usage.ru_stime, summary(name, info))
        rows.append((name, result))

    load = os.getloadavg()[0]
    from polyvis.nano.protocol import machine  # its CPU kernels decide the figures

    print(f"# expert builds, fp32 and bf16 side by side, one thread each; {machine()}, "
          f"load average {load:.1f} at the end; cache {cache}\n")  # fmt: skip
    print("| expert | precision | wall s | CPU s | fp32 / bf16 (wall, CPU) | held-out |")
    print("|---|---|---:|---:|---:|---|")
    for name, r in rows:
        (w32, c32, _), (w16, c16, _) = r["fp32"], r["bf16"]
        for p in PRECISIONS:
            wall, cpu, what = r[p]
            ratio = f"{w32 / w16:.2f}, {c32 / c16:.2f}" if p == "bf16" else ""
            print(f"| {name} | {p} | {wall:.0f} | {cpu:.0f} | {ratio} | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
