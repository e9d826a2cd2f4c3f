"""OCR family: a rendered string; "What does the text say?" -> the string.

Difficulty: easy = one lowercase word, black on white, large; medium = a word or a random
alphanumeric string, varied size and colour on a pale tint; hard = one or two words or a mixed-case
alphanumeric string of up to 10 characters, smaller text, slight rotation and pixel noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    add_noise,
    background,
    fit_font,
    level_index,
    pick,
    random_alnum,
    random_word,
    uniform_int,
)

QUESTION = "What does the text say?"


def random_text(rng: np.random.Generator, difficulty: str) -> str:
    """The string to render, by difficulty."""
    if difficulty == "easy":
        return random_word(rng, 4)
    if difficulty == "medium":
        return (
            random_word(rng, 4) if rng.random() < 0.5 else random_alnum(rng, uniform_int(rng, 3, 6))
        )
    kind = pick(rng, ["words", "alnum", "word"])
    if kind == "words":
        return f"{random_word(rng, 4)} {random_word(rng, 4)}"
    if kind == "alnum":
        return random_alnum(rng, uniform_int(rng, 5, 10))
    return random_word(rng, 4).capitalize()


def render_text(rng: np.random.Generator, text: str, size: int, difficulty: str) -> Image.Image:
    """Draw text at a random size, place and colour that keep it fully inside the image."""
    level = level_index(difficulty)
    img = background(rng, size, difficulty)
    margin = max(1, size // 16)
    # Largest font (px) tried; the text then shrinks until it fits the width.
    start = round(size * (0.45, 0.38, 0.32)[level] * (0.7 + 0.3 * rng.random()))
    fnt = fit_font(text, size - 2 * margin, (size - 2 * margin) * 0.7, start)
    x0, y0, x1, y1 = fnt.getbbox(text)
    w, h = x1 - x0, y1 - y0
    # Hard text is rotated by up to 6 degrees: keep sin(6°)·w/2 ≈ 0.06·w free above and below.
    tilt = int(np.ceil(0.06 * w)) if level == 2 else 0
    x = uniform_int(rng, margin, max(margin, size - margin - w)) - x0
    y = uniform_int(rng, margin + tilt, max(margin + tilt, size - margin - tilt - h)) - y0
    ink = (0, 0, 0) if level == 0 else tuple(uniform_int(rng, 0, 90) for _ in range(3))
    if level < 2:
        ImageDraw.Draw(img).text((x, y), text, font=fnt, fill=ink)
        return img
    # Hard: draw on a transparent layer, rotate a little around the text centre, composite.
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).text((x, y), text, font=fnt, fill=255)
    angle = float(rng.uniform(-6, 6))
    centre = (x + x0 + w / 2, y + y0 + h / 2)
    layer = layer.rotate(angle, resample=Image.BICUBIC, center=centre)
    img.paste(Image.new("RGB", (size, size), ink), (0, 0), layer)  # type: ignore[arg-type]
    return add_noise(img, rng, 6.0)


@FAMILIES.register("ocr")
class OcrFamily(Family):
    name = "ocr"
    metric = "exact_match"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        text = random_text(rng, difficulty)
        img = render_text(rng, text, size, difficulty)
        return Item(img, {"text": text, "qa": [qa(QUESTION, text, "read")]})
