"""Nano training steps per second: two polyvis source trees side by side, in alternating blocks.

Each variant is one `polyvis.train.train` process on the same run config (a nano run: the
demo's experts and feature cache), from its own source tree (`--old` and `--new`, each put first
on PYTHONPATH). The processes start together and take turns: one trains a block of `--steps`
optimizer steps while the other waits, then the other; `--blocks` turns each. Machine load
therefore falls on both alike, and the ratio of the two rates within a pair of blocks is what
the benchmark reports (wall clock and the process's CPU time). Checkpoints are off
(train.save_every=0), the rest of the config is as given, and each process has one torch thread.

The first losses of both runs are compared too (the old and new code on the same data order).

    POLYVIS_CACHE=... .venv/bin/python benchmarks/bench_nano_step.py --config RUN/config.yaml \
        --old /path/to/old/src [--new src] [--start-model] [--blocks 8 --steps 25 --warmup 10]

`--start-model` builds the config's start model once (with this tree) and trains both from it
(train.init_from), for an old tree that cannot read the config's model section.

`--variant compile` adds a third process: the new tree with each LM decoder layer under
torch.compile (one compile thread, a fresh inductor cache unless TORCHINDUCTOR_CACHE_DIR is set);
its first block's extra time is the compile cost. `--variant bf16` autocasts to bf16;
`--variant bf16-worker` also loads the data in one DataLoader worker (train.num_workers=1), which
runs on another core while the training process computes (its CPU time is not in the CPU column).
`--variant glibc-malloc` runs the new tree with glibc's malloc defaults
(POLYVIS_KEEP_FREED_MEMORY=0; every variant's process otherwise keeps freed memory, as a nano
run's does, when its tree has `polyvis.malloc`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- the worker: one training process, paused between blocks ------------------------------------
def worker(spec: dict) -> None:
    try:  # first, as a nano run's process does (trees before polyvis.malloc have no such step)
        from polyvis.malloc import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from polyvis.config import load_config
    from polyvis.train import loop

    sets = [f"train.max_steps={spec['total']}", "train.save_every=0", *spec.get("sets", [])]
    cfg = load_config(spec["config"], sets)
    if spec.get("compile"):
        start = loop._start_model

        def compiled(cfg):  # every decoder layer: what both the old and new forward call
            model, processor = start(cfg)
            for layer in model.language_model.model.layers:
                layer.compile(dynamic=True)
            return model, processor

        loop._start_model = compiled

    # the class that writes one row per optimizer step: loop._MetricsLog in older trees
    metrics_log = getattr(loop, "_MetricsLog", None) or loop.MetricsLog
    write = metrics_log.write  # called once per optimizer step, in every version of loop.py
    state = {"n": 0, "wall": 0.0, "cpu": 0.0, "losses": []}

    def report(kind: str, **extra) -> None:
        sys.stdout.write(json.dumps({"kind": kind, **extra}) + "\n")
        sys.stdout.flush()

    def wait() -> None:
        if sys.stdin.readline().strip() != "go":
            os._exit(0)  # the parent is done: no final save running beside another block
        state["wall"], state["cpu"] = time.perf_counter(), time.process_time()
        state["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def paused(self, row: dict) -> None:
        write(self, row)
        state["n"] += 1
        state["losses"].append(row["loss"])
        n, first = state["n"], spec["warmup"]
        if n == first or (n > first and (n - first) % spec["steps"] == 0):
            wall, cpu = time.perf_counter() - state["wall"], time.process_time() - state["cpu"]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - state["faults"]
            report("block", step=n, wall=wall, cpu=cpu, faults=faults, losses=state["losses"])
            state["losses"] = []
            wait()

    metrics_log.write = paused
    report("ready")
    wait()  # the first block, untimed, holds the setup (model, feature cache, loader) too
    loop.train(cfg, spec["out"], progress=False)


# -- the parent --------------------------------------------------------------------------------
def start_config(config: str, out: Path) -> Path:
    """The run's config with its start model saved once and named by train.init_from: an old
    tree that cannot read a newer model section (model.adapter.init_from) trains the same
    weights on the same data and train section."""
    import yaml
    from accelerate.utils import set_seed

    from polyvis.config import config_to_dict, load_config
    from polyvis.models.build import save_model
    from polyvis.train.loop import _start_model

    cfg = load_config(config)
    set_seed(cfg.train.seed)  # as train() does before building: same random initial parts
    model, processor = _start_model(cfg)
    save_model(model, processor, out / "start")
    data = config_to_dict(cfg)
    for key in ("init_from", "init_encoder"):
        data["model"]["adapter"].pop(key, None)
    data["train"]["init_from"] = str(out / "start")
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out / "config.yaml"


class Proc:
    def __init__(self, name: str, src: str, spec: dict):
        self.name = name
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
        env.update(spec.get("env", {}))
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        if spec.get("compile"):
            env.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
        self.p = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir()
        )  # fmt: skip
        self.blocks: list[dict] = []

    def read(self) -> dict:
        while True:
            line = self.p.stdout.readline()
            if not line:
                sys.exit(f"{self.name}: the training process ended early (rc {self.p.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def go(self) -> dict:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        msg = self.read()
        self.blocks.append(msg)
        return msg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="a nano run's config.yaml (its experts and data must exist)"
    )
    parser.add_argument("--old", help="source tree of the old code (the folder holding polyvis/)")
    parser.add_argument("--new", default=str(ROOT / "src"), help="source tree of the new code")
    parser.add_argument("--blocks", type=int, default=8, help="timed blocks per variant")
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    parser.add_argument("--losses", type=int, default=100, help="first losses compared")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=["compile", "bf16", "bf16-compile", "bf16-worker", "glibc-malloc"],
    )
    parser.add_argument("--set", action="append", default=[], help="config override (both runs)")
    parser.add_argument("--start-model", action="store_true",
                        help="save the config's start model once; both runs start from it")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if not args.config or not args.old:
        parser.error("--config and --old are required")

    tmp = Path(tempfile.mkdtemp(prefix="bench-nano-step-"))
    config = Path(args.config).resolve()
    if args.start_model:
        config = start_config(str(config), tmp)
    total = args.warmup + args.blocks * args.steps
    base = {"config": str(config), "total": total, "steps": args.steps, "warmup": args.warmup,
            "sets": args.set}  # fmt: skip
    trees = [("old", args.old, {}), ("new", args.new, {})]
    if "compile" in args.variant:
        trees.append(("new+compile", args.new, {"compile": True}))
    bf16 = [*args.set, "train.mixed_precision=bf16"]  # autocast: AVX512-BF16 matmuls
    if "bf16" in args.variant:
        trees.append(("new+bf16", args.new, {"sets": bf16}))
    if "bf16-compile" in args.variant:
        trees.append(("new+bf16+compile", args.new, {"sets": bf16, "compile": True}))
    if "bf16-worker" in args.variant:  # the data (tokenising, collation) on another core
        trees.append(("new+bf16+worker", args.new, {"sets": [*bf16, "train.num_workers=1"]}))
    if "glibc-malloc" in args.variant:  # the new tree with glibc's malloc defaults
        trees.append(("new+glibc-malloc", args.new, {"env": {"POLYVIS_KEEP_FREED_MEMORY": "0"}}))
    procs = [
        Proc(n, str(Path(s).resolve()), {**base, **x, "out": str(tmp / n)}) for n, s, x in trees
    ]
    for p in procs:  # setup one after the other, then the untimed first steps
        assert p.read()["kind"] == "ready"
    t0 = time.perf_counter()
    for p in procs:
        p.go()
    for b in range(args.blocks):  # alternate the order too: no variant always runs first
        for p in procs if b % 2 == 0 else procs[::-1]:
            p.go()
    for p in procs:
        p.p.stdin.close()
        p.p.wait()

    from polyvis.nano.protocol import machine  # its CPU kernels decide the figures

    load = os.getloadavg()
    print(f"# bench_nano_step: {args.blocks} blocks of {args.steps} steps per variant after "
          f"{args.warmup} untimed steps, one thread each; load average {load[0]:.1f}; "
          f"{machine()}; {time.perf_counter() - t0:.0f} s\n")  # fmt: skip
    ref = procs[0]
    names = [p.name for p in procs]
    head = " | ".join(f"{n} steps/s (wall, CPU)" for n in names)
    ratios = " | ".join(f"{n} / old (wall, CPU)" for n in names[1:])
    print(f"| block | {head} | {ratios} |")
    print("|---:|" + "---:|" * (2 * len(procs) - 1))
    wall_r: dict[str, list[float]] = {n: [] for n in names[1:]}
    cpu_r: dict[str, list[float]] = {n: [] for n in names[1:]}
    for i in range(1, args.blocks + 1):
        rates = [(args.steps / p.blocks[i]["wall"], args.steps / p.blocks[i]["cpu"]) for p in procs]
        cells = [f"{w:.2f}, {c:.2f}" for w, c in rates]
        for p, (w, c) in zip(procs[1:], rates[1:]):
            wall_r[p.name].append(w / rates[0][0])
            cpu_r[p.name].append(c / rates[0][1])
        rs = [f"{wall_r[n][-1]:.2f}, {cpu_r[n][-1]:.2f}" for n in names[1:]]
        print(f"| {i} | " + " | ".join(cells + rs) + " |")
    for n in names[1:]:
        sw = sum(b["wall"] for b in ref.blocks[1:]) / sum(
            b["wall"] for b in procs[names.index(n)].blocks[1:]
        )
        print(f"\n{n} / old: median of blocks {statistics.median(wall_r[n]):.2f}x wall, "
              f"{statistics.median(cpu_r[n]):.2f}x CPU; all blocks together {sw:.2f}x wall")  # fmt: skip
    faults = ", ".join(
        f"{p.name} {sum(b['faults'] for b in p.blocks[1:]) / (args.blocks * args.steps):.0f}"
        for p in procs
    )
    print(f"\npage faults per step (minor, all timed blocks): {faults}")
    for p in procs[1:]:
        extra = p.blocks[0]["wall"] - ref.blocks[0]["wall"]
        if p.name.endswith("compile"):
            print(
                f"{p.name}: setup and first {args.warmup} steps took {extra:.1f} s more than old's"
            )

    losses = {p.name: [x for b in p.blocks for x in b["losses"]][: args.losses] for p in procs}
    for n in names[1:]:
        a, b = losses["old"], losses[n]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        diff = max(abs(x - y) for x, y in zip(a, b))
        print(f"\nlosses, first {len(a)} steps, old vs {n}: identical for the first {same}; "
              f"largest difference {diff:.3g}")  # fmt: skip
        for i in sorted({0, 1, 2, 9, 24, 49, len(a) - 1}):
            if i < len(a):
                print(f"  step {i + 1}: {a[i]:.7f} {b[i]:.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
