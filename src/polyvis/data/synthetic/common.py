"""Helpers shared by the synthetic families: seeding, difficulty, fonts, colours, words, drawing.

Everything here is deterministic: a family draws only from the numpy Generator it is handed,
fonts come from matplotlib's bundled DejaVu files (no downloads, no system fonts), and images are
rasterised by PIL / matplotlib Agg, whose output depends only on their inputs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from polyvis.errors import ConfigError

T = TypeVar("T")

Difficulty = Literal["easy", "medium", "hard"]
LEVELS: tuple[str, ...] = ("easy", "medium", "hard")

# Six well-separated colours (names are the answers, so each must be unambiguous by eye).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
# Text drawn on a coloured surface: dark on the light colours, white on the rest.
TEXT_ON: dict[str, tuple[int, int, int]] = {
    c: (20, 20, 20) if c in ("yellow", "orange") else (255, 255, 255) for c in COLORS
}

# Short common words: OCR strings, sign texts, table cells, chart labels.
WORDS: tuple[str, ...] = tuple(
    """
    able acid aged also area army away baby back ball band bank base bath bear beat bell best
    bird blue boat body bone book born both bowl busy cake call calm camp card care cart case
    cash cell city clay club coal coat code cold cook cool copy corn cost crew crop dark data
    date dawn deal deep deer desk dial diet disk dock door dose down draw drop drum duck dust
    duty each earn east easy edge face fact fair farm fast fear file film fine fire firm fish
    flag flat flow food foot fork form fuel full fund gain game gate gift girl glad goal gold
    golf good grey grid grow hair half hall hand hard harm hat head heat help hero high hill
    hole home hope horn host hour idea iron item jazz join joke jump keen keep kind king kite
    lake lamp land lane last leaf left lens life lift line lion list load lock long loop lord
    loud love luck mail main map mark mask meal mild milk mind mint mode moon most move name
    navy near neck nest news nice node nose note oak oven pack page pair palm park part path
    peak pear pen pine pink plan play plot plug poem pool port post pump quiz race rail rain
    ramp rank rate read rest rice ride ring road rock roof room root rope rose ruby rule safe
    sail salt sand seat seed ship shoe shop side sign silk sing site size skin slow snow soap
    sock soft soil song soup star stem step sun swim tail tank taxi team tent term test tide
    tile time tool town tree trip tube tune unit vase view vote wall wave week well west wind
    wine wing wire wolf wood wool word work yard year zero zone ant ape arm art bag bat bed bee
    box bus cab cap car cat cow cup dog ear egg elf fan fig fox gem gum hen hut ice ink jam jar
    jet key kid leg lip log man mat mix mud net nut owl pan paw pea pig pin pot ram rat ray rib
    rug saw sea sky spy tap tea tie toe toy tub van web wig yak zip
    """.split()  # noqa: SIM905 (a list literal would be one word per line)
)
ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # no 0/O, 1/l/I look-alikes


def parse_difficulty(value: str | int, field: str = "difficulty") -> str:
    """'easy' | 'medium' | 'hard' (or 0 / 1 / 2) -> the level name."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LEVELS):
        return LEVELS[value]
    if isinstance(value, str) and value in LEVELS:
        return value
    raise ConfigError(field, f"{value!r} is not a difficulty; valid: {', '.join(LEVELS)} (or 0-2)")


def level_index(difficulty: str) -> int:
    """0 for easy, 1 for medium, 2 for hard."""
    return LEVELS.index(difficulty)


def stable_id(text: str) -> int:
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def item_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """The generator for one item: depends only on the seed and the keys, never on run order."""
    ints = [int(seed)] + [stable_id(k) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def pick(rng: np.random.Generator, seq: Sequence[T]) -> T:
    """One element of seq (a plain Python object, not a numpy scalar)."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence[T], k: int) -> list[T]:
    """k distinct elements of seq, in random order."""
    return [seq[int(i)] for i in rng.permutation(len(seq))[:k]]


def uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi] (both ends included)."""
    return int(rng.integers(lo, hi + 1))


def random_word(rng: np.random.Generator, max_len: int = 4) -> str:
    """A word from WORDS of at most max_len letters."""
    pool = [w for w in WORDS if len(w) <= max_len]
    return pick(rng, pool)


def distinct_words(rng: np.random.Generator, k: int, max_len: int = 4) -> list[str]:
    """k different words from WORDS, each of at most max_len letters."""
    return sample(rng, [w for w in WORDS if len(w) <= max_len], k)


def random_alnum(rng: np.random.Generator, n: int) -> str:
    return "".join(pick(rng, ALNUM) for _ in range(n))


@lru_cache(maxsize=4)
def font_path(mono: bool = False) -> str:
    """Path of matplotlib's bundled DejaVu Sans (or Sans Mono) TrueType file."""
    import matplotlib

    name = "DejaVuSansMono.ttf" if mono else "DejaVuSans.ttf"
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if path.is_file():
        return str(path)
    from matplotlib import font_manager  # slower: may build the font cache on first use

    return font_manager.findfont("DejaVu Sans Mono" if mono else "DejaVu Sans")


@lru_cache(maxsize=256)
def font(size_px: int, mono: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu at a pixel size (cached per process)."""
    return ImageFont.truetype(font_path(mono), max(1, int(size_px)))


def text_size(text: str, fnt: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """(width, height) of the ink box of text in fnt."""
    x0, y0, x1, y1 = fnt.getbbox(text)
    return x1 - x0, y1 - y0


def fit_font(
    text: str, max_w: float, max_h: float, start_px: int, mono: bool = False
) -> ImageFont.FreeTypeFont:
    """The largest font <= start_px whose rendering of text fits in max_w x max_h."""
    size = max(1, int(start_px))
    while size > 4:
        fnt = font(size, mono)
        w, h = text_size(text, fnt)
        if w <= max_w and h <= max_h:
            return fnt
        size -= 1
    return font(size, mono)


def draw_text_centered(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    text: str,
    fnt: ImageFont.FreeTypeFont,
    fill: tuple[int, int, int],
) -> None:
    """Draw text with its ink box centred in box = (x0, y0, x1, y1)."""
    bx0, by0, bx1, by1 = fnt.getbbox(text)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x = round(cx - (bx1 - bx0) / 2 - bx0)
    y = round(cy - (by1 - by0) / 2 - by0)
    draw.text((x, y), text, font=fnt, fill=fill)


def background(rng: np.random.Generator, size: int, difficulty: str) -> Image.Image:
    """A light canvas: plain white when easy, a random pale tint otherwise."""
    if difficulty == "easy":
        return Image.new("RGB", (size, size), (255, 255, 255))
    tint = tuple(uniform_int(rng, 225, 255) for _ in range(3))
    return Image.new("RGB", (size, size), tint)  # type: ignore[arg-type]


def add_noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Gaussian pixel noise of std sigma (0-255 scale); a no-op for sigma <= 0."""
    if sigma <= 0:
        return img
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def figure_to_image(fig: Any) -> Image.Image:
    """Rasterise a matplotlib Figure with the Agg backend into an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")


def new_figure(size: int, dpi: int = 100) -> Any:
    """A matplotlib Figure of exactly size x size pixels, without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(size / dpi, size / dpi), dpi=dpi)


def px_to_pt(px: float, dpi: int = 100) -> float:
    """matplotlib font sizes are points; synthetic layouts think in pixels."""
    return px * 72.0 / dpi


def draw_sign(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], color: str, word: str
) -> None:
    """A rounded sign of a COLORS colour over box (x0, y0, x1, y1), its word as large as fits."""
    x0, y0, x1, y1 = box
    radius = max(1, (y1 - y0) // 5)
    draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=radius, fill=COLORS[color])
    fnt = fit_font(word, (x1 - x0) * 0.85, (y1 - y0) * 0.7, round((y1 - y0) * 0.7))
    draw_text_centered(draw, (x0, y0, x1, y1), word, fnt, TEXT_ON[color])


def spread(rng: np.random.Generator, lengths: Sequence[int], room: int, gap: int) -> list[int]:
    """Start offsets of segments laid one after another in `room` pixels, at least `gap` apart,
    the space left over split at random (before, between and after them)."""
    slack = max(0, room - sum(lengths) - gap * (len(lengths) - 1))
    cuts = sorted(uniform_int(rng, 0, slack) for _ in lengths)
    starts, pos = [], 0
    for cut, length in zip(cuts, lengths):
        starts.append(cut + pos)
        pos += length + gap
    return starts
