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
