"""Train-and-evaluate runs for the nano world: typed configs in, RUN/eval/results.json out.

Each run is one process (`polyvis.nano.worker`: its training stages, then its evaluation;
forked from `polyvis.nano.fork_server` on Linux), launched a few at a time with one thread
each: on models this small two threads are only a little faster than one, so parallel
one-thread jobs finish sooner. Every stage resumes on its own
(the trainer's checkpoints, RUN/done.json, RUN/eval/results.json), so a killed demo or ablation
continues where it stopped; on Linux its workers die with it (worker.die_with_parent).

A run may first train an `align` stage (LLM frozen: fusion, adapter and the image tokens learn)
into RUN/align; the run itself then starts from it (`train.init_from`), as OmniFusion and LLaVA
train.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from polyvis.config import Config, load_config
from polyvis.errors import ConfigError, PolyVisError
from polyvis.nano.fair_world import int_at_least
from polyvis.nano.fork_server import ForkedRun, RunServer
from polyvis.nano.worker import PARENT_ENV, EvalStage, FlopsStage, Stage, TrainStage
from polyvis.progress import duration

# Runs fork from one server that imported torch once (fork_server); elsewhere, a Python each.
FORK_RUNS = sys.platform.startswith("linux")

# Scoring settings of every nano run (LaTeX answers are 20-40 characters, near one token each).
EVAL_BATCH_SIZE, EVAL_MAX_NEW_TOKENS = 32, 48


@dataclass
class RunSpec:
    name: str
    config: Config  # the run's own stage (train.init_from is RUN/align when it has one)
    out: Path
    eval_files: list[Path]
    eval_limit: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    align: Config | None = None  # an align stage trained first into RUN/align
    eval_dir: str = "eval"  # RUN/<eval_dir>: one run may be scored on several sets in turn
    after: list[FlopsStage] = field(default_factory=list)  # run last, each until its file exists

    @classmethod
    def build(
        cls,
        name: str,
        config: dict[str, Any],
        out: Path,
        eval_files: list[Path],
        eval_limit: int | None = None,
        meta: dict[str, Any] | None = None,
        align: dict[str, Any] | None = None,
        eval_dir: str = "eval",
    ) -> RunSpec:
        """A run with its stages' configs validated once, here: `config` (a full polyvis config
        dict) and, with `align` (config sections), an align stage (see stage_configs). An error
        in the align stage alone names its field under `align.`."""
        main, first = stage_configs(config, out, align)
        cfg = load_config(main)
        try:
            align_cfg = load_config(first) if first is not None else None
        except ConfigError as err:
            msg = err.message
            raise ConfigError(f"align.{err.field}" if err.field else "align", msg) from None
        return cls(
            name, cfg, out, list(eval_files), eval_limit, dict(meta or {}), align_cfg, eval_dir
        )

    @property
    def results_path(self) -> Path:
        return self.out / self.eval_dir / "results.json"


def stage_configs(
    config: dict[str, Any], out: Path, align: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the run's config, its align stage's config or None). The align stage is the run's config
    with `align`'s sections merged over it, `train.stage: align` and no LLM rate; the run then
    starts from RUN/align, named by its absolute path so that the run's config.yaml trains from
    any folder. `config` itself is not changed."""
    if align is None:
        return config, None
    train = config.get("train", {})
    main = {**config, "train": {**train, "init_from": str(Path(out).absolute() / "align")}}
    first = {**config, **{k: {**config.get(k, {}), **v} for k, v in align.items()}}
    first["train"] = {
        **{k: v for k, v in first.get("train", {}).items() if k not in ("init_from", "lr_llm")},
        "stage": "align",
    }
    return main, first


def pending_stages(spec: RunSpec, evaluate: bool = True) -> list[Stage]:
    """The stages the run still needs, in order (finished ones are skipped)."""
    stages: list[Stage] = []
    if not (spec.out / "done.json").is_file():
        if spec.align is not None and not (spec.out / "align" / "done.json").is_file():
            stages.append(TrainStage(spec.align, spec.out / "align"))
        stages.append(TrainStage(spec.config, spec.out))
    if evaluate and spec.eval_files and not spec.results_path.is_file():
        stages.append(
            EvalStage(
                spec.out / "final",
                list(spec.eval_files),
                spec.out / spec.eval_dir,
                spec.name,
                EVAL_BATCH_SIZE,
                EVAL_MAX_NEW_TOKENS,
                spec.eval_limit,
                # a run whose encoders were read from the cache is scored from it too: every
                # run of a grid then encodes the shared val and test images once
                spec.config.train.cache_features,
            )
        )
    return stages + [s for s in spec.after if not s.done]


def check_reused(spec: RunSpec) -> None:
    """A ConfigError naming the field, before anything is launched, when a stage of `spec` that
    already trained (finished or checkpointed) was trained with another config: a changed grid
    or base must not silently reuse runs of the old one."""
    from polyvis.train.run_dir import check_reusable

    for cfg, run in ((spec.align, spec.out / "align"), (spec.config, spec.out)):
        if cfg is not None and (run / "config.yaml").is_file():
            try:
                check_reusable(run, cfg)
            except ConfigError as err:
                msg = err.message
                raise ConfigError(err.field, f"run {spec.name}: {msg}") from None


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false"
    )
    # the worker dies with this process (worker.die_with_parent): a killed grid leaves no run
    # training on into the folder its rerun will use
    env[PARENT_ENV] = str(os.getpid())
    return env


def _launch(spec: RunSpec, stages: list[Stage], threads: int) -> tuple[subprocess.Popen, IO]:
    log = (spec.out / "train.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyvis.nano.worker"],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(threads),
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(pickle.dumps(stages))
        proc.stdin.close()
    except BrokenPipeError:  # the worker died first: its exit status and log say why
        pass
    return proc, log


@dataclass(frozen=True)
class Finished:
    """A run that train_runs has just finished, and where the call stands."""

    spec: RunSpec
    seconds: float  # the run's wall time, training and scoring
    done: int  # runs finished so far in this call
    total: int  # runs this call trains or scores (finished ones found on disk not counted)
    elapsed: float  # wall seconds since the call began

    def line(self) -> str:
        """ "  NAME: done in 311 s [6/48, about 1 h 12 min left at this pace]": the estimate is
        the pace so far (runs start longest first, so it errs long)."""
        left = ""
        if self.done < self.total:
            pace = self.elapsed / self.done
            left = f", about {duration(pace * (self.total - self.done))} left at this pace"
        return f"  {self.spec.name}: done in {self.seconds:.0f} s [{self.done}/{self.total}{left}]"


@contextlib.contextmanager
def run_server(fork: bool | None = None) -> Iterator[RunServer | None]:
    """One fork server for several `train_runs` calls (a grid's selection, then its test
    runs): it imports once, at the first launch, and stops on exit. None where runs do not
    fork (`fork`, default FORK_RUNS)."""
    server = RunServer(_env(1)) if (FORK_RUNS if fork is None else fork) else None
    try:
        yield server
    finally:
        if server is not None:
            server.close()


def train_runs(
    specs: list[RunSpec],
    jobs: int = 2,
    threads: int = 1,
    on_done: Callable[[Finished], None] | None = None,
    evaluate: bool = True,
    fork: bool | None = None,
    server: RunServer | None = None,
) -> dict[str, float]:
    """Train (then, with `evaluate`, score on its held-out files) every run not done yet, `jobs`
    one-thread processes at a time; returns each run's training seconds. Evaluating in the
    run's own process keeps both cores busy: the evaluations of a pair run side by side too.
    A failed run stops the others and raises a PolyVisError with the end of its log. Each
    worker dies with the thread that launched it (Linux), which waits for it here. `fork`
    (default FORK_RUNS: on Linux) forks the runs from one process that imported torch once
    (polyvis.nano.fork_server) rather than starting a Python for each; `server` (from
    `run_server`) is that process, shared with other calls, and left running here."""
    for name, value in (("jobs", jobs), ("threads", threads)):
        if not int_at_least(value, 1):  # 0 jobs would wait forever for a free slot
            raise ConfigError(name, f"must be a positive integer, got {value!r}")
    for spec in specs:
        check_reused(spec)
    pending = launch_order([(s, st) for s in specs if (st := pending_stages(s, evaluate))])
    running: list[tuple[RunSpec, subprocess.Popen | ForkedRun, float, IO | None]] = []
    total, done, began = len(pending), 0, time.perf_counter()
    if fork is None:
        fork = FORK_RUNS
    owned = contextlib.ExitStack()  # a server of this call's own, stopped when it ends
    if not fork:
        server = None
    elif server is None:
        server = owned.enter_context(run_server(fork=True))
    try:
        while pending or running:
            while pending and len(running) < jobs:
                spec, stages = pending.pop(0)
                spec.out.mkdir(parents=True, exist_ok=True)
                if server is not None:
                    proc, log = (
                        server.launch(stages, spec.out / "train.log", _env(threads), threads),
                        None,
                    )
                else:
                    proc, log = _launch(spec, stages, threads)
                running.append((spec, proc, time.perf_counter(), log))
            time.sleep(0.2)
            for item in list(running):
                spec, proc, start, log = item
                if proc.poll() is None:
                    continue
                if log is not None:
                    log.close()
                running.remove(item)
                if proc.returncode != 0:
                    text = (spec.out / "train.log").read_text(errors="replace")
                    tail = text.strip().splitlines()[-3:]
                    if not tail and server is not None:
                        tail = [f"the run server stopped: {server.errors()}"]
                    raise PolyVisError(
                        f"run {spec.name} failed (see {spec.out / 'train.log'}): {' | '.join(tail)}"
                    )
                done += 1
                if on_done:
                    now = time.perf_counter()
                    on_done(Finished(spec, now - start, done, total, now - began))
    finally:  # a failed run, an error here or Ctrl-C: the other runs stop too
        for _, proc, _, log in running:
            proc.kill()
            proc.wait()
            if log is not None:
                log.close()
        owned.close()
    return {s.name: train_seconds(s) for s in specs if (s.out / "done.json").is_file()}


def launch_order(pending: list[tuple[RunSpec, list[Stage]]]) -> list[tuple[RunSpec, list[Stage]]]:
    """Longest first (optimizer steps left x sequence length; then sequence length, for runs
    with only scoring left): with a few runs at a time, a long run started last would leave the
    other cores idle while it finishes. Equal estimates keep their given order."""

    def work(item: tuple[RunSpec, list[Stage]]) -> tuple[int, int]:
        spec, stages = item
        length = spec.config.data.max_length
        steps = sum(st.config.train.max_steps for st in stages if isinstance(st, TrainStage))
        return -steps * length, -length

    return sorted(pending, key=work)


def train_seconds(spec: RunSpec) -> float:
    """Training seconds of the run, its align stage included."""
    runs = [spec.out] + ([spec.out / "align"] if spec.align is not None else [])
    return sum(float(json.loads((r / "done.json").read_text()).get("seconds", 0.0)) for r in runs)


def read_results(spec: RunSpec) -> dict[str, Any]:
    """The run's evaluation (RUN/eval/results.json, written by its worker)."""
    if not spec.results_path.is_file():
        raise PolyVisError(
            f"run {spec.name} has no results ({spec.results_path}): train it with train_runs"
        )
    return json.loads(spec.results_path.read_text())


def family_scores(results: dict[str, Any]) -> dict[str, float]:
    """Per-group scores in points (0-100): each family, and "family/metric" for its questions
    scored with another metric, as the leaderboard's columns and mean have them (CIDEr divided
    by its 10: polyvis.eval.metrics.group_top), so the fair protocol chooses on val by the mean
    it reports on test. The nano world's sets hold only each family's own metric."""
    from polyvis.eval.metrics import group_top

    return {k: 100.0 * float(v) / group_top(k) for k, v in results["scores"].items()}
