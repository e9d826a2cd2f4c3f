"""The nano step benchmarks run end to end on a tiny config (they hook polyvis' training loop, so
a rename inside it breaks them silently unless they run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests._bench import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture(scope="module")
def synth_sets(tmp_path_factory) -> list[str]:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(["scene"], 16, 0, out, image_size=64, progress=False)
    return [
        "train.stage=finetune",
        "train.batch_size=2",
        f"data.synthetic={{families: [scene], n: 16, seed: 0, size: 64, dir: {out}}}",
    ]


def test_roofline_splits_a_step_into_its_parts(synth_sets, capsys) -> None:
    from transformers.utils import logging as hf_logging

    from polyvis.train.metrics import MetricsLog

    metrics_write = MetricsLog.write
    bench = load_benchmark("bench_nano_roofline")
    sets = [x for s in synth_sets for x in ("--set", s)]
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    try:  # the script quiets transformers for its whole process: not for the tests after this
        bench.main(["--config", str(CFG), "--blocks", "1", "--steps", "2", "--warmup", "2",
                    "--top", "3", *sets])  # fmt: skip
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    assert MetricsLog.write is metrics_write  # unpatched: later training is not timed op by op
    out = capsys.readouterr().out
    parts = dict(re.findall(r"^\| ([a-zA-Z][^|]+?) \| ([\d.]+) \|", out, re.M))
    for part in ("matmuls (mm, addmm, bmm)", "SDPA attention, forward and backward", "step"):
        assert part in parts, out
    assert float(parts["matmuls (mm, addmm, bmm)"]) > 0
    assert "the 3 slowest other aten ops" in out
    assert re.search(r"matmul GFLOP per step: \d", out)


def test_step_benchmark_compares_two_trees_on_the_same_losses(synth_sets, capsys) -> None:
    bench = load_benchmark("bench_nano_step")
    sets = [x for s in synth_sets for x in ("--set", s)]
    src = str(ROOT / "src")
    rc = bench.main(["--config", str(CFG), "--old", src, "--new", src, "--blocks", "2",
                     "--steps", "2", "--warmup", "1", "--losses", "5",
                     "--variant", "glibc-malloc", *sets])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"new / old: median of blocks [\d.]+x wall", out), out
    # one tree against itself: the same data order and weights, so the same losses; the
    # allocator's settings change no arithmetic
    assert out.count("identical for the first 5") == 2, out
    assert re.search(r"page faults per step .*: old \d+, new \d+, new\+glibc-malloc \d+", out), out
