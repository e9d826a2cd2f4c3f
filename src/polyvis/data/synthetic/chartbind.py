"""Chartbind family: bars that differ by colour; "What is the value of the red bar?" -> "42".

k bars (2, 3, 4: easy, medium, hard; medium adds a pale tint, hard pixel noise), each its own
colour, its value (10-99) printed above it in a font as large as the bar's slot allows. There is
no axis and there are no labels, and the tallest bar always reaches the same height, so a bar's
height gives only its ratio to the tallest: the value must be read, and the colour seen. The
values of a chart are more than 5 % apart, so under relaxed accuracy (the metric, as for
`chart`) another bar's value never counts as right, and reading every value without the colour
leaves 1 in k (docs/two-expert-questions.md).
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw, ImageFont

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.binding import CANDIDATES
from polyvis.data.synthetic.common import (
    COLORS,
    add_noise,
    background,
    draw_text_centered,
    fit_font,
    level_index,
    sample,
    text_size,
    uniform_int,
)

VALUES = (10, 99)
# relaxed accuracy's tolerance: two values of one chart are always further apart than this
TOLERANCE = 0.05
INK = (20, 20, 20)


def bar_values(rng: np.random.Generator, k: int) -> list[int]:
    """k values in VALUES, each two more than TOLERANCE (of the larger) apart."""
    values: list[int] = []
    while len(values) < k:
        v = uniform_int(rng, *VALUES)
        if all(abs(v - u) > TOLERANCE * max(u, v) for u in values):
            values.append(v)
    return values


def _value_font(texts: list[str], slot: float, size: int) -> ImageFont.FreeTypeFont:
    """One font for every value: the largest at which each fits its slot."""
    fonts = [fit_font(t, slot * 0.9, size * 0.28, round(size * 0.3)) for t in texts]
    return min(fonts, key=lambda f: f.size)


@FAMILIES.register("chartbind")
class ChartBindFamily(Family):
    name = "chartbind"
    metric = "relaxed_accuracy"
    two_expert_tasks = ("colour_value",)

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        k = CANDIDATES[difficulty]
        img = background(rng, size, difficulty)
        draw = ImageDraw.Draw(img)
        values, colors = bar_values(rng, k), sample(rng, list(COLORS), k)
        margin = max(1, size // 32)
        slot = (size - 2 * margin) / k
        texts = [str(v) for v in values]
        fnt = _value_font(texts, slot, size)
        text_h = max(text_size(t, fnt)[1] for t in texts)
        pad = max(1, size // 32)
        base = size - margin - 1  # the baseline's row; bars stand on it
        tallest = max(1, base - margin - text_h - pad)
        bar_w = max(1, round(slot * 0.7))
        bars = []
        for i, (value, color, text) in enumerate(zip(values, colors, texts)):
            cx = margin + (i + 0.5) * slot
            x0, top = round(cx - bar_w / 2), base - max(1, round(tallest * value / max(values)))
            draw.rectangle((x0, top, x0 + bar_w - 1, base - 1), fill=COLORS[color])
            draw_text_centered(
                draw, (cx - slot / 2, top - pad - text_h, cx + slot / 2, top - pad), text, fnt, INK
            )
            bars.append({"color": color, "value": value, "box": [x0, top, x0 + bar_w, base]})
        draw.line((margin, base, size - margin - 1, base), fill=(90, 90, 90), width=1)
        img = add_noise(img, rng, 5.0 if level_index(difficulty) == 2 else 0.0)
        target = bars[int(rng.integers(k))]
        question = qa(
            f"What is the value of the {target['color']} bar?",
            str(target["value"]),
            "colour_value",
            metric="relaxed_accuracy",
        )
        return Item(img, {"task": "colour_value", "bars": bars, "qa": [question]})
