"""Mixed family: short words written on coloured signs; answering needs colour *and* reading.

Each image has 2-4 signs with distinct colours and distinct words. Questions:
- read:   "What does the red sign say?" -> "lamp"
- colour: "What colour is the sign that says lamp?" -> "red"
Difficulty: easy = 2 large signs on white, medium = 3, hard = 4 smaller signs, a pale tint and
pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    COLORS,
    TEXT_ON,
    add_noise,
    background,
    distinct_words,
    draw_text_centered,
    fit_font,
    level_index,
    sample,
    uniform_int,
)

# Per level: number of signs, sign width range (fraction of the image side).
_LEVELS = {"easy": (2, 0.45, 0.6), "medium": (3, 0.38, 0.5), "hard": (4, 0.32, 0.45)}


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True when boxes (x0, y0, x1, y1) are at least gap pixels apart on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


@FAMILIES.register("mixed")
class MixedFamily(Family):
    name = "mixed"
    metric = "exact_match"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        level = level_index(difficulty)
        n, wmin, wmax = _LEVELS[difficulty]
        colors = sample(rng, list(COLORS), n)
        img = background(rng, size, difficulty)
        draw = ImageDraw.Draw(img)
        signs: list[dict] = []
        for color, word in zip(colors, distinct_words(rng, n, 4)):
            for _try in range(60):  # rejection sampling; a crowded image gets fewer signs
                w = round(size * float(rng.uniform(wmin, wmax)))
                h = max(6, round(w * float(rng.uniform(0.45, 0.6))))
                x, y = uniform_int(rng, 0, size - w), uniform_int(rng, 0, size - h)
                box = (x, y, x + w, y + h)
                if all(_apart(box, tuple(s["box"]), 2) for s in signs):
                    signs.append({"color": color, "word": word, "box": list(box)})
                    break
        for s in signs:
            x0, y0, x1, y1 = s["box"]
            radius = max(1, (y1 - y0) // 5)
            draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=radius, fill=COLORS[s["color"]])
            fnt = fit_font(s["word"], (x1 - x0) * 0.85, (y1 - y0) * 0.7, round((y1 - y0) * 0.7))
            draw_text_centered(draw, (x0, y0, x1, y1), s["word"], fnt, TEXT_ON[s["color"]])
        img = add_noise(img, rng, 5.0 if level == 2 else 0.0)
        target = signs[int(rng.integers(len(signs)))]
        other = signs[int(rng.integers(len(signs)))]
        questions = [
            qa(f"What does the {target['color']} sign say?", target["word"], "read"),
            qa(f"What colour is the sign that says {other['word']}?", other["color"], "colour"),
        ]
        return Item(img, {"signs": signs, "qa": questions})
