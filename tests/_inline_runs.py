"""Grid runs trained in the test's own process: each worker process would import torch again
(seconds per run). `use_launcher` puts `inline_launcher` (or any stand-in) in place of
`polyvis.nano.runs._launch`, with the fork server off, so that every run goes through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from polyvis.nano import runs
from polyvis.nano.worker import run_stages


class EndedWorker:
    """What train_runs reads of a worker process that has already ended well."""

    returncode = 0

    def poll(self) -> int:
        return 0

    def kill(self) -> None:
        pass

    def wait(self) -> int:
        return 0


class Interrupted(Exception):
    """The grid stopped at a launch (`stop_at`), as a kill would stop it."""


def inline_launcher(
    launched: list, entry: Callable[[Any, list], Any], stop_at: int | None = None
) -> Callable:
    """A launcher that runs a run's stages here and appends `entry(spec, stages)` to `launched`;
    with stop_at, the grid is interrupted at that launch."""

    def launch(spec, stages, threads):
        if stop_at is not None and len(launched) == stop_at:
            raise Interrupted
        launched.append(entry(spec, stages))
        spec.out.mkdir(parents=True, exist_ok=True)
        log = spec.out / "train.log"
        assert run_stages(stages) == 0, log.read_text()[-2000:] if log.is_file() else spec.name
        return EndedWorker(), log.open("a")

    return launch


def use_launcher(monkeypatch, launcher: Callable) -> None:
    """Every run of train_runs launched by `launcher(spec, stages, threads)`."""
    monkeypatch.setattr(runs, "FORK_RUNS", False)
    monkeypatch.setattr(runs, "_launch", launcher)
