"""One nano run's process: its training stages, then its evaluation, as library calls.

On Linux `polyvis.nano.runs` forks each run from a server that imported torch once
(`polyvis.nano.fork_server`), which calls `run_stages`. Elsewhere it starts `python -m
polyvis.nano.worker` once per run, with the run's stages pickled on its standard input and its
output going to RUN/train.log; torch and transformers are then imported once per run, not once
per stage. Either way a run is a process of its own, not a multiprocessing child: it starts with
the one-thread environment already set, and the caller's `__main__` is not imported again, so
scripts need no `__main__` guard.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from polyvis.errors import PolyVisError
from polyvis.malloc import keep_freed_memory

if TYPE_CHECKING:
    from polyvis.config import Config


@dataclass(frozen=True)
class TrainStage:
    """`polyvis.train.train(config, out)`: resumes from out's checkpoints, a no-op when done."""

    config: Config
    out: Path

    def run(self) -> None:
        from polyvis.train import train

        final = train(self.config, self.out, progress=False)
        print(f"final model: {final}")


@dataclass(frozen=True)
class EvalStage:
    """`polyvis.eval.runner.evaluate` of the model in model_dir on the records files."""

    model_dir: Path
    files: list[Path]
    out: Path
    name: str
    batch_size: int
    max_new_tokens: int
    limit: int | None = None
    feature_cache: bool = False  # the encoders' outputs from the feature cache, as training's

    def run(self) -> None:
        from polyvis.eval.report import results_table
        from polyvis.eval.runner import evaluate
        from polyvis.models.build import load_model

        # the arguments `polyvis eval MODEL --device cpu --no-progress ...` passes, so that
        # answers and scores match a run scored from the command line
        model_dir = str(self.model_dir)
        model, processor = load_model(model_dir, dtype=None, device="cpu")
        results = evaluate(
            model,
            processor,
            list(self.files),
            out_dir=self.out,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            num_beams=1,
            metric=None,
            limit=self.limit or None,
            progress=False,
            name=self.name,
            model_dir=model_dir,
            feature_cache=self.feature_cache,
        )
        print(results_table(results))


@dataclass(frozen=True)
class FlopsStage:
    """FLOPs of one training step of the finished model (polyvis.nano.flops) into `out`."""

    model_dir: Path
    config: Config
    out: Path

    @property
    def done(self) -> bool:
        return self.out.is_file()

    def run(self) -> None:
        from polyvis.nano.flops import step_flops
        from polyvis.paths import write_json_atomic

        flops = step_flops(self.model_dir, self.config)
        write_json_atomic(self.out, {"flops_per_step": flops, "model": str(self.model_dir)})
        print(f"FLOPs per training step: {flops:.4g}")


Stage = TrainStage | EvalStage | FlopsStage

# The launcher's pid (polyvis.nano.runs sets it): the worker dies with that process.
PARENT_ENV = "POLYVIS_WORKER_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker when its launcher dies, even by kill -9,
    so that no orphan keeps training into a run folder that a rerun then trains into too.
    Set here rather than in Popen(preexec_fn=...): Python code between fork and exec is not
    safe in a launcher with threads. A no-op elsewhere or when not launched by polyvis."""
    parent = os.environ.pop(PARENT_ENV, None)  # not passed on to this worker's own children
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl to call: the launcher still kills its runs
        return
    if os.getppid() != int(parent):  # the launcher died before prctl: nothing would signal us
        os._exit(1)


def run_stages(stages: list[Stage]) -> int:
    """Run the stages in order in this process; stops at the first failure. Returns an exit
    status: 0, 2 for a PolyVisError (printed as one line), 1 for any other error (traceback)."""
    try:
        for stage in stages:
            stage.run()
    except PolyVisError as err:
        print(f"polyvis: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def main() -> int:
    die_with_parent()  # first: the stages' pickle may take a while to arrive
    keep_freed_memory()
    stages = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    return run_stages(stages)


if __name__ == "__main__":
    sys.exit(main())
