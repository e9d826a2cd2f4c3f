"""One progress bar for every long job (training, evaluation, data, expert builds): rich's."""

from __future__ import annotations

from typing import Any


def progress_bar(
    enabled: bool,
    label: str | None = None,
    fields: str = "",
    eta: bool = True,
    elapsed: bool = True,
) -> Any:
    """A rich Progress: the task's description (or the fixed `label`), a bar, done/total, then
    `fields` (a format string over the task's fields, e.g. "loss {task.fields[loss]:.4f}"), the
    time spent and the time left. Disabled, it draws nothing and costs nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [
        TextColumn(f"[bold]{label}" if label is not None else "[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if fields:
        columns.append(TextColumn(fields))
    if elapsed:
        columns.append(TimeElapsedColumn())
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, disable=not enabled)


def duration(seconds: float) -> str:
    """ "1 h 05 min" from an hour up, else "4 min 7 s": wall times in logs and reports."""
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60} s"
