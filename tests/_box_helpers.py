"""Where a drawn box's outline lies, for the tests that check boxes by pixel colour."""

from __future__ import annotations


def edges(x1: int, y1: int, x2: int, y2: int) -> list[tuple[int, int]]:
    """The outline's outer ring of pixels (PIL draws a box from (x1, y1) to (x2, y2) inclusive)."""
    return (
        [(x, y1) for x in range(x1, x2 + 1)]
        + [(x, y2) for x in range(x1, x2 + 1)]
        + [(x1, y) for y in range(y1, y2 + 1)]
        + [(x2, y) for y in range(y1, y2 + 1)]
    )
