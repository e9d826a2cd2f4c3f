"""Where a nano training step's time goes, against what this CPU's matmuls can do.

One `polyvis.train.train` process on a nano run config, one torch thread, checkpoints off. After
`--warmup` steps it alternates `--blocks` pairs of blocks of `--steps` steps: one as it is, one
with every aten op timed where it runs (a TorchDispatchMode below autograd, so the backward's
ops are counted too); batches differ in length, so alternating puts the same mix in both. It prints a table per step: the matmuls (mm, addmm, bmm) with their GFLOP/s, SDPA
attention forward and backward, every other aten op, and what is left of the step outside aten
ops (Python, the data, autograd's bookkeeping). Then the same CPU's sgemm rate on the step's most
frequent matmul shape and on a large square one, its causal attention (forward and backward)
on SDPA's flash and math backends at the step's most frequent shape, and the step rate if
everything but the matmuls took no time: the ceiling of any change that keeps the step's FLOPs.

    POLYVIS_CACHE=... .venv/bin/python benchmarks/bench_nano_roofline.py --config RUN/config.yaml \
        [--blocks 6 --steps 10 --warmup 20] [--top 25] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

aten = torch.ops.aten
MATMULS = {aten.mm.default: "mm", aten.addmm.default: "addmm", aten.bmm.default: "bmm"}
ATTENTION_FORWARD = aten._scaled_dot_product_flash_attention_for_cpu.default
ATTENTION = {ATTENTION_FORWARD, aten._scaled_dot_product_flash_attention_for_cpu_backward.default}


def matmul_flops(name: str, args: tuple) -> tuple[int, tuple[int, ...]]:
    """(FLOPs, (M, K, N) or (B, M, K, N)) of one matmul call."""
    a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
    if name == "bmm":
        bsz, m, k = a.shape
        n = b.shape[-1]
        return 2 * bsz * m * k * n, (bsz, m, k, n)
    m, k = a.shape
    n = b.shape[-1]
    return 2 * m * k * n, (m, k, n)


class OpClock(TorchDispatchMode):
    """Times every aten op where it runs; counts matmul FLOPs and shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.flops = 0
        self.shapes: collections.Counter[tuple[int, ...]] = collections.Counter()
        self.attention: collections.Counter[tuple] = collections.Counter()  # (q, k) shapes
        self.other: collections.Counter[str] = collections.Counter()  # seconds by op name

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t
        if func in MATMULS:
            self.seconds["matmul"] += dt
            flops, shape = matmul_flops(MATMULS[func], args)
            self.flops += flops
            self.shapes[shape] += 1
        elif func in ATTENTION:
            self.seconds["attention"] += dt
            if func is ATTENTION_FORWARD:
                self.attention[(tuple(args[0].shape), tuple(args[1].shape))] += 1
        else:
            self.seconds["other"] += dt
            self.other[str(func.overloadpacket.__name__)] += dt
        return out


def sgemm_rate(shape: tuple[int, ...], seconds: float = 1.0) -> float:
    """GFLOP/s of one thread's float32 matmul of this shape ((M, K, N) or (B, M, K, N))."""
    *batch, m, k, n = shape
    a, b = torch.randn(*batch, m, k), torch.randn(*batch, k, n)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    per = (time.perf_counter() - start) / reps
    return 2 * (batch[0] if batch else 1) * m * k * n / per / 1e9


def attention_ms(q_shape: tuple, k_shape: tuple, backend: Any, seconds: float = 1.0) -> float:
    """ms of one causal SDPA forward and backward at these shapes, on one SDPA backend."""
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(q_shape, requires_grad=True)
    k, v = (torch.randn(k_shape, requires_grad=True) for _ in range(2))
    gqa = q_shape[1] != k_shape[1]

    def once() -> None:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).sum().backward()

    for _ in range(3):
        once()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        reps += 1
    return (time.perf_counter() - start) / reps * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", required=True, help="a nano run's config.yaml")
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--blocks", type=int, default=6, help="pairs of blocks (plain, ops timed)")
    ap.add_argument("--warmup", type=int, default=20, help="steps before the first block")
    ap.add_argument("--top", type=int, default=0, help="also list the N slowest other ops")
    ap.add_argument("--set", action="append", default=[], help="config override (KEY=VALUE)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from polyvis.config import load_config
    from polyvis.nano.protocol import machine
    from polyvis.train import loop

    total = args.warmup + 2 * args.blocks * args.steps
    cfg = load_config(args.config, [*args.set, f"train.max_steps={total}", "train.save_every=0"])
    clock = OpClock()
    spent = {"plain": 0.0, "timed": 0.0}
    last = [0.0]
    # the class that writes one row per optimizer step: loop._MetricsLog in older trees
    metrics_log = getattr(loop, "_MetricsLog", None) or loop.MetricsLog
    write = metrics_log.write  # called once per optimizer step

    def timed(self, row: dict) -> None:
        write(self, row)
        n = row["step"]
        if n < args.warmup or (n - args.warmup) % args.steps:
            return
        now = time.perf_counter()
        block = (n - args.warmup) // args.steps  # the block that starts now; odd ones are timed
        if block:
            spent["timed" if block % 2 == 0 else "plain"] += now - last[0]
        if block % 2 == 0 and block:
            clock.__exit__(None, None, None)
        if block % 2 == 1:
            clock.__enter__()
        last[0] = time.perf_counter()

    metrics_log.write = timed
    out = Path(tempfile.mkdtemp(prefix="roofline-"))
    try:
        loop.train(cfg, out / "run", progress=False)
    finally:  # a caller's later training (the tests run this in-process) must not be timed
        metrics_log.write = write
        shutil.rmtree(out, ignore_errors=True)

    n = args.blocks * args.steps
    step, timed_step = spent["plain"] / n, spent["timed"] / n
    ms = {k: 1000 * v / n for k, v in clock.seconds.items()}
    inside = sum(ms.values())
    # the clock's own overhead is in the timed block only: what lies outside aten ops is the
    # plain step less the ops' own time
    outside = max(0.0, 1000 * step - inside)
    gflops = clock.flops / n / 1e9
    common = clock.shapes.most_common(1)[0][0]
    peak_common, peak_big = sgemm_rate(common), sgemm_rate((2048, 2048, 2048))
    print(f"machine: {machine()}; one torch thread")
    print(
        f"config: {args.config}; {args.blocks} x 2 blocks of {args.steps} steps after {args.warmup}"
    )
    print(f"step: {1000 * step:.1f} ms plain, {1000 * timed_step:.1f} ms with every op timed\n")
    print("| part of a step | ms | share | GFLOP/s |")
    print("|---|---:|---:|---:|")
    rows = [
        ("matmuls (mm, addmm, bmm)", ms.get("matmul", 0.0), f"{gflops / ms['matmul'] * 1000:.1f}"),
        ("SDPA attention, forward and backward", ms.get("attention", 0.0), ""),
        ("other aten ops (elementwise, norms, copies, optimizer)", ms.get("other", 0.0), ""),
        ("outside aten ops (Python, data, autograd)", outside, ""),
    ]
    for name, value, rate in rows:
        print(f"| {name} | {value:.1f} | {value / (1000 * step):.0%} | {rate} |")
    print(f"| step | {1000 * step:.1f} | 100% | {gflops / step:.1f} |")
    if args.top:
        print(f"\n| the {args.top} slowest other aten ops | ms per step |\n|---|---:|")
        for name, sec in clock.other.most_common(args.top):
            print(f"| {name} | {1000 * sec / n:.2f} |")
    print(f"\nmatmul GFLOP per step: {gflops:.2f}; most frequent shape {common}")
    print(
        f"sgemm alone, one thread: {peak_common:.1f} GFLOP/s at {common}, {peak_big:.1f} at 2048^3"
    )
    from torch.nn.attention import SDPBackend

    (q_shape, k_shape), calls = clock.attention.most_common(1)[0]
    flash = attention_ms(q_shape, k_shape, SDPBackend.FLASH_ATTENTION)
    math = attention_ms(q_shape, k_shape, SDPBackend.MATH)
    print(
        f"causal attention forward + backward at q {q_shape}, k/v {k_shape} "
        f"({calls} of the {sum(clock.attention.values())} forward calls timed): "
        f"flash {flash:.2f} ms, math {math:.2f} ms"
    )
    bound = ms["matmul"] / 1000
    print(
        f"the matmuls alone at the step's own rate: {bound * 1000:.1f} ms, "
        f"{1 / bound:.1f} steps/s = {step / bound:.2f}x the plain step"
    )


if __name__ == "__main__":
    main()
