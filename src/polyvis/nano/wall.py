"""A grid's wall clock, kept on disk while the grid runs.

A resumed grid states its wall time as the sum over its invocations. An invocation that ends by
an exception or SIGTERM saves its share on the way out; one killed outright (SIGKILL, a machine
or session going away) cannot, so the clock is also saved every `every` seconds: such a kill
loses at most that much.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import TracebackType

from polyvis.paths import write_json_atomic


class WallClock:
    """`with WallClock(path) as clock:` adds this invocation's time to the seconds in `path`
    (JSON `{"seconds": ...}`, absent at the first invocation); `clock()` is the total so far."""

    def __init__(self, path: Path, every: float = 30.0) -> None:
        if every <= 0:
            raise ValueError(f"WallClock: every must be positive, got {every}")
        self.path = Path(path)
        self.every = every
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.is_file() else 0.0
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self._start

    def save(self) -> None:
        write_json_atomic(self.path, {"seconds": self()})

    def _keep_saving(self) -> None:
        while not self._stop.wait(self.every):
            self.save()

    def __enter__(self) -> WallClock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._saver = threading.Thread(target=self._keep_saving, name="wall-clock", daemon=True)
        self._saver.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._saver is not None:
            self._saver.join()
        self.save()
