"""LaTeX family: formulas from a small grammar, rendered with matplotlib mathtext (no TeX).

Question "Write the LaTeX for the formula." -> the source without $ (metric: normalised edit
distance). The source is canonical so it can be matched exactly: scripts always in braces
(`x^{2}`), binary operators surrounded by single spaces, `\\sum_{i=1}^{n}` followed by a space.
Difficulty is the nesting depth (easy 1, medium 2, hard 3) plus a size / position jitter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import add_noise, background, level_index, pick, uniform_int

QUESTION = "Write the LaTeX for the formula."
VARS = ("x", "y", "z", "a", "b", "n", "k", "t")
GREEK = (
    r"\alpha",
    r"\beta",
    r"\gamma",
    r"\theta",
    r"\lambda",
    r"\mu",
    r"\pi",
    r"\sigma",
    r"\omega",
)
# Source length bounds per level: hard formulas must not collapse into a lone `x_{i}`.
MIN_LEN = {"easy": 1, "medium": 8, "hard": 16}
MAX_LEN = {"easy": 24, "medium": 40, "hard": 60}


def atom(rng: np.random.Generator) -> str:
    """A variable, a Greek letter, a number or a coefficient times a variable."""
    kind = pick(rng, ("var", "var", "greek", "num", "coef"))
    if kind == "var":
        return pick(rng, VARS)
    if kind == "greek":
        return pick(rng, GREEK)
    if kind == "num":
        return str(uniform_int(rng, 1, 99))
    return f"{uniform_int(rng, 2, 9)}{pick(rng, VARS)}"


def small(rng: np.random.Generator) -> str:
    """A short script: a digit, a letter or 'i+1'-like."""
    return pick(rng, ("2", "3", "n", "i", "k", "2", "i+1", "-1"))


def expr(rng: np.random.Generator, depth: int) -> str:
    """A formula of at most `depth` levels of nesting."""
    if depth <= 0:
        return atom(rng)
    kind = pick(rng, ("binary", "power", "sub", "frac", "sqrt", "sum", "paren"))
    if kind == "binary":
        op = pick(rng, ("+", "-"))
        return f"{expr(rng, depth - 1)} {op} {expr(rng, depth - 1)}"
    if kind == "power":
        base = pick(rng, VARS + GREEK[:3])
        return f"{base}^{{{small(rng) if depth == 1 else expr(rng, depth - 1)}}}"
    if kind == "sub":
        return f"{pick(rng, VARS + GREEK[:3])}_{{{small(rng)}}}"
    if kind == "frac":
        return rf"\frac{{{expr(rng, depth - 1)}}}{{{expr(rng, depth - 1)}}}"
    if kind == "sqrt":
        return rf"\sqrt{{{expr(rng, depth - 1)}}}"
    if kind == "sum":
        return rf"\sum_{{i=1}}^{{{pick(rng, ('n', 'k', '10'))}}} {pick(rng, VARS)}_{{i}}"
    return f"({expr(rng, depth - 1)})"


def random_formula(rng: np.random.Generator, difficulty: str) -> str:
    """A formula whose source length is within MIN_LEN..MAX_LEN (resampled until it is)."""
    depth = level_index(difficulty) + 1
    for _ in range(50):
        src = expr(rng, depth)
        if rng.random() < 0.3:  # sometimes an equation
            src = f"{pick(rng, ('y', 'f(x)', 'S'))} = {src}"
        if MIN_LEN[difficulty] <= len(src) <= MAX_LEN[difficulty]:
            return src
    return atom(rng)


@lru_cache(maxsize=1)
def _parser():
    from matplotlib.mathtext import MathTextParser

    return MathTextParser("agg")


def render_mask(src: str, fontsize: float = 24.0) -> np.ndarray:
    """The formula's ink as a uint8 alpha mask, cropped to its ink box."""
    from matplotlib.font_manager import FontProperties

    out = _parser().parse(
        f"${src}$", dpi=100, prop=FontProperties(family="DejaVu Sans", size=fontsize)
    )
    mask = np.asarray(out.image, dtype=np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((1, 1), np.uint8)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@FAMILIES.register("latex")
class LatexFamily(Family):
    name = "latex"
    metric = "edit_similarity"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        level = level_index(difficulty)
        src = random_formula(rng, difficulty)
        mask = Image.fromarray(render_mask(src), "L")
        img = background(rng, size, difficulty)
        margin = max(1, size // 16)
        # Scale the formula to fill most of the width (less at higher difficulty), keep aspect.
        fill = float(rng.uniform(0.75, 1.0)) * (1.0, 0.95, 0.9)[level]
        scale = min(
            fill * (size - 2 * margin) / mask.width, 0.8 * (size - 2 * margin) / mask.height
        )
        w, h = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
        mask = mask.resize((w, h), Image.LANCZOS)
        x = uniform_int(rng, margin, max(margin, size - margin - w))
        y = uniform_int(rng, margin, max(margin, size - margin - h))
        ink = (0, 0, 0) if level == 0 else tuple(uniform_int(rng, 0, 70) for _ in range(3))
        img.paste(Image.new("RGB", (w, h), ink), (x, y), mask)  # type: ignore[arg-type]
        img = add_noise(img, rng, 5.0 if level == 2 else 0.0)
        return Item(img, {"latex": src, "qa": [qa(QUESTION, src, "transcribe")]})
