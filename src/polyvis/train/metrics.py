"""A run's metrics: metrics.jsonl, one row per optimizer step, and tensorboard when installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polyvis.paths import write_text_atomic


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return None


class MetricsLog:
    """metrics.jsonl (one row per step) and tensorboard. `start_step`: the step training starts
    after (the resumed checkpoint's); rows past it, written before an interruption, are dropped,
    since those steps run again."""

    def __init__(self, path: Path, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = path
        self.tb = None
        if enabled:
            self._trim(start_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides the interrupted segment's events from that step on
                self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def _trim(self, start_step: int) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        steps = [_row_step(line) for line in lines]
        kept = [line for line, n in zip(lines, steps) if n is not None and n <= start_step]
        if len(kept) != len(lines):  # rewritten atomically: a kill now keeps the old file
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])
