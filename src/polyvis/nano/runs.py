"""Train-and-evaluate runs for the nano world: one config, one run directory, one results.json.

Runs are independent processes (`python -m polyvis.nano.stages`: the run's `polyvis train` and
`polyvis eval` commands in one process), launched a few at a time with one thread each: on
models this small two threads are only 1.3-1.8x faster than one, so parallel one-thread jobs
finish sooner. Every run resumes on its own (the trainer's checkpoints), so a
killed demo or ablation continues where it stopped.

A run may first train an `align` stage (LLM frozen: fusion, adapter and the image tokens learn)
into RUN/align; the run itself then starts from it (`train.init_from`), as OmniFusion and LLaVA
train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polyvis.errors import PolyVisError


@dataclass
class RunSpec:
    name: str
    config: dict[str, Any]  # a full polyvis config (model / data / train)
    out: Path
    eval_files: list[Path]
    eval_limit: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # config sections ({"train": {...}, "data": {...}}) of an align stage trained first into
    # RUN/align, merged over `config` (None: no align stage)
    align: dict[str, Any] | None = None
    # {"encoder": NAME, "projector": PATH}: the run's first stage starts from RUN/start, the
    # config's model with its linear adapter set from that encoder's projector (nano.start)
    start: dict[str, Any] | None = None

    @property
    def results_path(self) -> Path:
        return self.out / "eval" / "results.json"


def _train_cmd(cfg_path: Path, out: Path) -> list[str]:
    return ["train", str(cfg_path), "--out", str(out), "--no-progress"]


def stage_configs(spec: RunSpec) -> dict[str, dict[str, Any]]:
    """{file name in RUN: config}: run-config.yaml, and align-config.yaml when the run has an
    align stage (then run-config.yaml starts from RUN/align). The align stage is the run's
    config with spec.align's sections merged over it, `train.stage: align`, and no LLM rate.
    With spec.start the first stage starts from RUN/start."""
    first = {"init_from": str(spec.out / "start")} if spec.start else {}
    if spec.align is None:
        if not first:
            return {"run-config.yaml": spec.config}
        return {"run-config.yaml": {**spec.config, "train": {**spec.config["train"], **first}}}
    main = {**spec.config, "train": {**spec.config["train"], "init_from": str(spec.out / "align")}}
    align = {**spec.config, **{k: {**spec.config.get(k, {}), **v} for k, v in spec.align.items()}}
    align["train"] = {
        **{k: v for k, v in align["train"].items() if k not in ("init_from", "lr_llm")},
        "stage": "align",
        **first,
    }
    return {"align-config.yaml": align, "run-config.yaml": main}


def write_start(spec: RunSpec) -> None:
    """Build RUN/start for a run with spec.start (once; an interrupted build is redone)."""
    from polyvis.nano.start import projector_start

    if spec.start is None or (spec.out / "start" / "config.json").is_file():
        return
    projector_start(spec.config, spec.start["encoder"], spec.start["projector"], spec.out / "start")


# Scoring settings of every nano run (LaTeX answers are 20-40 characters, near one token each).
EVAL_BATCH_SIZE, EVAL_MAX_NEW_TOKENS = 32, 48


def _eval_cmd(
    spec: RunSpec, batch_size: int = EVAL_BATCH_SIZE, max_new_tokens: int = EVAL_MAX_NEW_TOKENS
) -> list[str]:
    cmd = [
        "eval", str(spec.out / "final"), "--data",
        *map(str, spec.eval_files), "--out", str(spec.out / "eval"), "--batch-size",
        str(batch_size), "--max-new-tokens", str(max_new_tokens), "--name", spec.name,
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    return cmd + (["--limit", str(spec.eval_limit)] if spec.eval_limit else [])


def _stages(spec: RunSpec, evaluate: bool) -> list[list[str]]:
    """The `polyvis` commands (argument lists) the run still needs, in order."""
    stages = []
    if not (spec.out / "done.json").is_file():
        if spec.align is not None and not (spec.out / "align" / "done.json").is_file():
            stages.append(_train_cmd(spec.out / "align-config.yaml", spec.out / "align"))
        stages.append(_train_cmd(spec.out / "run-config.yaml", spec.out))
    if evaluate and spec.eval_files and not spec.results_path.is_file():
        stages.append(_eval_cmd(spec))
    return stages


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false"
    )
    return env


def train_runs(
    specs: list[RunSpec],
    jobs: int = 2,
    threads: int = 1,
    on_done: Callable[[RunSpec, float], None] | None = None,
    evaluate: bool = True,
) -> dict[str, float]:
    """Train (then, with `evaluate`, score on its held-out files) every run not done yet, `jobs`
    one-thread processes at a time; returns each run's training seconds. Evaluating in the
    run's own job keeps both cores busy: the evaluations of a pair run side by side too."""
    pending = [(s, _stages(s, evaluate)) for s in specs]
    pending = [(s, st) for s, st in pending if st]
    running: list[tuple[RunSpec, subprocess.Popen, float, Any]] = []

    def launch(spec: RunSpec, stages: list[list[str]], start: float) -> None:
        # One process for all of the run's stages: torch and transformers are imported and the
        # model loaded once, not once per stage (about 8 s a stage on this 2-core machine).
        log = (spec.out / "train.log").open("a")
        cmd = [sys.executable, "-m", "polyvis.nano.stages", json.dumps(stages)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(threads))
        running.append((spec, proc, start, log))

    while pending or running:
        while pending and len(running) < jobs:
            spec, stages = pending.pop(0)
            spec.out.mkdir(parents=True, exist_ok=True)
            for name, cfg in stage_configs(spec).items():
                (spec.out / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
            write_start(spec)
            launch(spec, stages, time.perf_counter())
        time.sleep(0.2)
        for item in list(running):
            spec, proc, start, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                for _, other, _, other_log in running:
                    other.kill()
                    other_log.close()
                tail = (
                    (spec.out / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
                )
                raise PolyVisError(
                    f"run {spec.name} failed (see {spec.out / 'train.log'}): {' | '.join(tail)}"
                )
            if on_done:
                on_done(spec, time.perf_counter() - start)
    return {s.name: train_seconds(s) for s in specs if (s.out / "done.json").is_file()}


def train_seconds(spec: RunSpec) -> float:
    """Training seconds of the run, its align stage included."""
    runs = [spec.out] + ([spec.out / "align"] if spec.align is not None else [])
    return sum(float(json.loads((r / "done.json").read_text()).get("seconds", 0.0)) for r in runs)


def evaluate_run(
    spec: RunSpec, batch_size: int = EVAL_BATCH_SIZE, max_new_tokens: int = EVAL_MAX_NEW_TOKENS
) -> dict[str, Any]:
    """Evaluate a trained run on its held-out files (cached in RUN/eval/results.json)."""
    if spec.results_path.is_file():
        return json.loads(spec.results_path.read_text())
    import torch

    from polyvis.eval.runner import evaluate
    from polyvis.models.build import load_model, quiet_transformers

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with quiet_transformers():  # a demo or ablation loads many tiny models: no bar per load
        model, processor = load_model(spec.out / "final")
    return evaluate(
        model,
        processor,
        spec.eval_files,
        out_dir=spec.out / "eval",
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=spec.eval_limit,
        progress=False,
        name=spec.name,
        model_dir=spec.out / "final",
    )


def family_scores(results: dict[str, Any]) -> dict[str, float]:
    """Per-family scores in points (0-100): the groups scored with each family's own metric."""
    return {k: 100.0 * float(v) for k, v in results["scores"].items() if "/" not in k}
