"""Table family: a rendered grid with a shaded header row.

The first column holds distinct words (the row keys), the others integers. Questions:
- lookup:   "What is the Cost of lamp?" -> "42"
- markdown: "Transcribe the table as markdown." -> "| Item | Cost |\\n| --- | --- |\\n| lamp | 42 |"
            (metric "edit_similarity")
Difficulty: easy = 2 columns x 2 rows, medium = 3 x 3, hard = 4 x 4 with larger numbers, a pale
tint and pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw, ImageFont

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    add_noise,
    background,
    distinct_words,
    draw_text_centered,
    fit_font,
    level_index,
    pick,
    sample,
    uniform_int,
)


def draw_table_grid(
    draw: ImageDraw.ImageDraw,
    page: tuple[int, int],
    margin: int,
    shape: tuple[int, int],
    cell: tuple[float, float],
) -> None:
    """A table's ruling on a (width, height) page: the header row shaded, then every row and
    column line (the last ones drawn one pixel in, so they stay on the page)."""
    (width, height), (n_rows, n_cols), (cw, ch) = page, shape, cell
    line = (90, 90, 90)
    draw.rectangle((margin, margin, width - margin - 1, round(margin + ch)), fill=(215, 215, 215))
    for r in range(n_rows + 1):
        y = round(margin + r * ch) - (1 if r == n_rows else 0)
        draw.line((margin, y, width - margin - 1, y), fill=line, width=1)
    for c in range(n_cols + 1):
        x = round(margin + c * cw) - (1 if c == n_cols else 0)
        draw.line((x, margin, x, height - margin - 1), fill=line, width=1)


KEY_HEADERS = ("Item", "Name", "Team", "City")
VALUE_HEADERS = ("Cost", "Qty", "Age", "Year", "Size", "Rank", "Score", "Code")


def random_table(rng: np.random.Generator, difficulty: str) -> list[list[str]]:
    """Rows of cells; row 0 is the header, column 0 the distinct keys."""
    level = level_index(difficulty)
    cols = rows = (2, 3, 4)[level]
    header = [pick(rng, KEY_HEADERS)] + sample(rng, VALUE_HEADERS, cols - 1)
    keys = distinct_words(rng, rows, 4)
    hi = (99, 99, 999)[level]
    body = [[k] + [str(uniform_int(rng, 1, hi)) for _ in range(cols - 1)] for k in keys]
    return [header, *body]


def to_markdown(table: list[list[str]]) -> str:
    """A GitHub-style markdown table, one line per row."""
    lines = ["| " + " | ".join(table[0]) + " |", "| " + " | ".join("---" for _ in table[0]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def table_questions(rng: np.random.Generator, table: list[list[str]]) -> list[dict]:
    r = uniform_int(rng, 1, len(table) - 1)
    c = uniform_int(rng, 1, len(table[0]) - 1)
    return [
        qa(f"What is the {table[0][c]} of {table[r][0]}?", table[r][c], "lookup"),
        qa(
            "Transcribe the table as markdown.",
            to_markdown(table),
            "markdown",
            metric="edit_similarity",
        ),
    ]


@FAMILIES.register("table")
class TableFamily(Family):
    name = "table"
    metric = "anls"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        level = level_index(difficulty)
        table = random_table(rng, difficulty)
        img = background(rng, size, difficulty)
        draw = ImageDraw.Draw(img)
        n_rows, n_cols = len(table), len(table[0])
        margin = max(1, size // 32)
        cw, ch = (size - 2 * margin) / n_cols, (size - 2 * margin) / n_rows

        # One font size for the whole table (the largest at which every cell fits), except at
        # easy, where each cell's text is as large as its cell allows: at 64 px a header like
        # "Score" otherwise shrank the numbers to a 9 px font (15 px when fitted on their own).
        def fitted(text: str) -> ImageFont.FreeTypeFont:
            return fit_font(text, cw * 0.9, ch * 0.8, round(ch * 0.75))

        longest = max((cell for row in table for cell in row), key=len)
        table_font = None if level == 0 else fitted(longest)
        draw_table_grid(draw, (size, size), margin, (n_rows, n_cols), (cw, ch))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                box = (
                    margin + c * cw,
                    margin + r * ch,
                    margin + (c + 1) * cw,
                    margin + (r + 1) * ch,
                )
                draw_text_centered(draw, box, cell, table_font or fitted(cell), (0, 0, 0))
        img = add_noise(img, rng, 5.0 if level == 2 else 0.0)
        return Item(img, {"table": table, "qa": table_questions(rng, table)})
