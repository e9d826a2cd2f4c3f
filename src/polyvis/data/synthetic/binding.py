"""Binding family: questions that need two experts at once, tied together by place.

Each image asks one question; its type (the record's `task`) is drawn at random:
- position_colour: a row of n shapes of distinct colours, one of them the only circle, square or
  triangle. "What colour is the shape just left of the triangle?" (or right) -> "green".
- colour_text: k signs one above the other, distinct colours and words.
  "What does the red sign say?" -> "lamp".
- position_text: k rows, each a sign and a shape side by side (the same order in every row), one
  shape the only one of its kind. "What does the sign left of the circle say?" -> "tree".
k is 2, 3, 4 (easy, medium, hard) and n = k + 1; medium adds a pale tint, hard pixel noise.
Answers are drawn uniformly (colours of six, words of the word list, the asked candidate among
those in the image), so one expert that sees only one of the two properties is left at 1 in k
(docs/two-expert-questions.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ImageDraw

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    COLORS,
    add_noise,
    background,
    distinct_words,
    draw_sign,
    level_index,
    pick,
    sample,
    spread,
    uniform_int,
)
from polyvis.data.synthetic.scene import SHAPES, draw_shape

TASKS: tuple[str, ...] = ("position_colour", "colour_text", "position_text")
# Candidates per level: signs or rows (k); the row of shapes has k + 1.
CANDIDATES = {"easy": 2, "medium": 3, "hard": 4}
# position_colour's shape sides, as fractions of the image side: clip-nano saw 10-23 px shapes.
_ROW_SIDES = {"easy": (0.2, 0.26), "medium": (0.15, 0.2), "hard": (0.12, 0.16)}


def _frame(size: int) -> tuple[int, int, int]:
    """(margin, room between the margins, gap between neighbours) in pixels."""
    margin = max(1, size // 32)
    return margin, size - 2 * margin, max(2, size // 32)


def _rows(size: int, k: int) -> list[tuple[int, int]]:
    """(top, height) of k equal rows filling the image between its margins."""
    margin, room, gap = _frame(size)
    row_h = (room - gap * (k - 1)) / k
    return [(round(margin + i * (row_h + gap)), max(2, int(row_h))) for i in range(k)]


def _anchor_kinds(rng: np.random.Generator, n: int, at: int) -> tuple[str, list[str]]:
    """The anchor's shape and n shape kinds where only index `at` is of the anchor's kind."""
    anchor = pick(rng, SHAPES)
    others = [s for s in SHAPES if s != anchor]
    kinds = [pick(rng, others) for _ in range(n - 1)]
    kinds.insert(at, anchor)
    return anchor, kinds


def position_colour(
    rng: np.random.Generator, size: int, difficulty: str, draw: ImageDraw.ImageDraw
) -> dict[str, Any]:
    """A row of shapes; ask the colour of the anchor's neighbour on one side."""
    n = CANDIDATES[difficulty] + 1
    margin, room, gap = _frame(size)
    lo, hi = _ROW_SIDES[difficulty]
    cap = max(2, (room - gap * (n - 1)) // n)
    gap = min(gap, (room - cap * n) // (n - 1))  # binds only on tiny images
    lo_px = max(3, round(lo * size))
    sides = [min(cap, uniform_int(rng, lo_px, max(lo_px, round(hi * size)))) for _ in range(n)]
    xs = [margin + x for x in spread(rng, sides, room, gap)]
    # One row: the shapes' vertical centres stay within a band of +-size/16.
    jitter, tallest = size // 16, max(sides)
    centre = uniform_int(rng, margin + tallest // 2, size - margin - tallest + tallest // 2)
    direction = pick(rng, ("left", "right"))
    at = uniform_int(rng, 1, n - 1) if direction == "left" else uniform_int(rng, 0, n - 2)
    anchor, kinds = _anchor_kinds(rng, n, at)
    colors = sample(rng, list(COLORS), n)
    objects = []
    for x, side, kind, color in zip(xs, sides, kinds, colors):
        y = centre - side // 2 + uniform_int(rng, -jitter, jitter)
        y = min(max(y, margin), size - margin - side)
        objects.append({"shape": kind, "color": color, "bbox": [x, y, side, side]})
        draw_shape(draw, kind, [x, y, side, side], COLORS[color])
    neighbour = objects[at - 1 if direction == "left" else at + 1]
    question = f"What colour is the shape just {direction} of the {anchor}?"
    return {"objects": objects, "qa": [qa(question, neighbour["color"], "position_colour")]}


def colour_text(
    rng: np.random.Generator, size: int, difficulty: str, draw: ImageDraw.ImageDraw
) -> dict[str, Any]:
    """Signs one above the other; ask the word on the sign of one colour."""
    k = CANDIDATES[difficulty]
    margin, room, _ = _frame(size)
    colors, words = sample(rng, list(COLORS), k), distinct_words(rng, k, 4)
    signs = []
    for (top, row_h), color, word in zip(_rows(size, k), colors, words):
        h = max(2, round(row_h * float(rng.uniform(0.85, 1.0))))
        w = max(2, round(room * float(rng.uniform(0.85, 1.0))))
        x, y = margin + uniform_int(rng, 0, room - w), top + uniform_int(rng, 0, row_h - h)
        signs.append({"color": color, "word": word, "box": [x, y, x + w, y + h]})
        draw_sign(draw, (x, y, x + w, y + h), color, word)
    target = signs[int(rng.integers(k))]
    question = f"What does the {target['color']} sign say?"
    return {"signs": signs, "qa": [qa(question, target["word"], "colour_text")]}


def position_text(
    rng: np.random.Generator, size: int, difficulty: str, draw: ImageDraw.ImageDraw
) -> dict[str, Any]:
    """Rows of a sign beside a shape; ask the word on the sign beside the anchor shape."""
    k = CANDIDATES[difficulty]
    margin, room, gap = _frame(size)
    sign_first = bool(rng.random() < 0.5)  # the same order in every row
    at = int(rng.integers(k))
    anchor, kinds = _anchor_kinds(rng, k, at)
    colors, words = sample(rng, list(COLORS), k), distinct_words(rng, k, 4)
    rows = []
    for (top, row_h), kind, color, word in zip(_rows(size, k), kinds, colors, words):
        side = max(2, round(row_h * float(rng.uniform(0.4, 0.5))))
        h = max(2, round(row_h * float(rng.uniform(0.8, 1.0))))
        w = max(2, room - side - gap - uniform_int(rng, 0, round(room * 0.05)))
        x = margin + uniform_int(rng, 0, max(0, room - (w + gap + side)))
        sx, shape_x = (x, x + w + gap) if sign_first else (x + side + gap, x)
        sy = top + uniform_int(rng, 0, row_h - h)
        shape_y = top + (row_h - side) // 2
        box = [shape_x, shape_y, side, side]
        shape_color = pick(rng, list(COLORS))
        rows.append(
            {
                "color": color,
                "word": word,
                "box": [sx, sy, sx + w, sy + h],
                "shape": kind,
                "shape_color": shape_color,
                "bbox": box,
            }
        )
        draw_sign(draw, (sx, sy, sx + w, sy + h), color, word)
        draw_shape(draw, kind, box, COLORS[shape_color])
    side_word = "left" if sign_first else "right"
    question = f"What does the sign {side_word} of the {anchor} say?"
    return {"rows": rows, "qa": [qa(question, rows[at]["word"], "position_text")]}


_DRAW = {
    "position_colour": position_colour,
    "colour_text": colour_text,
    "position_text": position_text,
}


@FAMILIES.register("binding")
class BindingFamily(Family):
    name = "binding"
    metric = "exact_match"
    two_expert_tasks = TASKS

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        task = pick(rng, TASKS)
        img = background(rng, size, difficulty)
        meta = {"task": task, **_DRAW[task](rng, size, difficulty, ImageDraw.Draw(img))}
        img = add_noise(img, rng, 5.0 if level_index(difficulty) == 2 else 0.0)
        return Item(img, meta)
