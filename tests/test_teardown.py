"""The end of training on several processes lets gloo's threads settle before the process group
goes (polyvis.train.teardown): the last barrier, a sleep that releases the GIL, then the end."""

from __future__ import annotations

import pytest

from polyvis.train import teardown


class Recorder:
    def __init__(self, processes: int, calls: list):
        self.num_processes, self.calls = processes, calls

    def wait_for_everyone(self) -> None:
        self.calls.append("barrier")

    def end_training(self) -> None:
        self.calls.append("end")


@pytest.mark.parametrize(
    ("processes", "expected"),
    [(2, ["barrier", ("sleep", teardown.SETTLE_SECONDS), "end"]), (1, ["barrier", "end"])],
)
def test_several_processes_settle_after_the_last_barrier(monkeypatch, processes, expected):
    calls: list = []
    monkeypatch.setattr(teardown.time, "sleep", lambda s: calls.append(("sleep", s)))
    teardown.end_training(Recorder(processes, calls))
    assert calls == expected
