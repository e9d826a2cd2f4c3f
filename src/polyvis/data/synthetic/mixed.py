"""Mixed family: short words written on coloured signs; answering needs colour *and* reading.

The signs have distinct colours and distinct words. Questions, by level:
- easy, one wide sign: read "What does the sign say?" -> "lamp"; colour "What colour is the
  sign?" -> "red"; describe "What does the sign say, and what colour is it?" -> "lamp red", which
  neither a scene expert (no words) nor a document expert (no colours) answers alone. The word
  comes first, as a transcribing decoder begins its answers.
- medium, two wide signs one above the other, named by place: read "What does the top sign
  say?", colour "What colour is the bottom sign?", describe "What does the top sign say, and what
  colour is it?".
- hard, three smaller signs anywhere on a pale tint with pixel noise, named by the other
  expert's property: read "What does the red sign say?" -> "lamp"; colour "What colour is the
  sign that says lamp?" -> "red".
Every level also has transcribe "Read the signs." -> "lamp tree kid" (every word, top to bottom,
then left to right; metric "edit_similarity"): the Vary-style transcription a document expert
can pretrain on.
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

# Per level: number of signs, sign width range (fraction of the image side), height / width range.
# Easy and medium signs are wide and low, so their words are written large (a 64 px image still
# reads); hard ones leave words 6-8 px high.
_LEVELS = {
    "easy": (1, 0.8, 0.95, (0.45, 0.55)),
    "medium": (2, 0.75, 0.95, (0.38, 0.48)),
    "hard": (3, 0.38, 0.5, (0.45, 0.6)),
}


TRANSCRIBE = "Read the signs."


def _reading_key(sign: dict) -> tuple[int, int]:
    """Top to bottom by the sign's centre row, then left to right."""
    x0, y0, x1, y1 = sign["box"]
    return (y0 + y1, x0 + x1)


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True when boxes (x0, y0, x1, y1) are at least gap pixels apart on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _scattered(rng, size, colors, words, wr, hr) -> list[dict]:
    """Signs anywhere, by rejection sampling; a crowded image gets fewer signs."""
    signs: list[dict] = []
    for color, word in zip(colors, words):
        for _try in range(60):
            w = round(size * float(rng.uniform(*wr)))
            h = max(6, round(w * float(rng.uniform(*hr))))
            x, y = uniform_int(rng, 0, size - w), uniform_int(rng, 0, size - h)
            box = (x, y, x + w, y + h)
            if all(_apart(box, tuple(s["box"]), 2) for s in signs):
                signs.append({"color": color, "word": word, "box": list(box)})
                break
    return signs


def _stacked(rng, size, colors, words, wr, hr) -> list[dict]:
    """Wide signs one above the other: always all of them, each word written large."""
    gap = max(2, size // 32)
    ws = [round(size * float(rng.uniform(*wr))) for _ in colors]
    hs = [max(6, round(w * float(rng.uniform(*hr)))) for w in ws]
    room = size - gap * (len(hs) - 1)
    scale = min(1.0, room / sum(hs))  # all must fit in the height
    hs = [max(6, int(h * scale)) for h in hs]
    slack, y, signs = room - sum(hs), 0, []
    for c, t, w, h in zip(colors, words, ws, hs):
        extra = uniform_int(rng, 0, slack)
        slack, y = slack - extra, y + extra
        x = uniform_int(rng, 0, size - w)
        signs.append({"color": c, "word": t, "box": [x, y, x + w, y + h]})
        y += h + gap
    return signs


def _asked(
    read: tuple[str, dict], colour: tuple[str, dict], describe: tuple[str, dict]
) -> list[dict]:
    """Easy and medium levels' questions, each about a (name, sign); the name is "" for the one
    sign or "top " / "bottom "."""
    (rn, r), (cn, c), (dn, d) = read, colour, describe
    return [
        qa(f"What does the {rn}sign say?", r["word"], "read"),
        qa(f"What colour is the {cn}sign?", c["color"], "colour"),
        qa(
            f"What does the {dn}sign say, and what colour is it?",
            f"{d['word']} {d['color']}",
            "describe",
        ),
    ]


def _by_place(rng: np.random.Generator, ordered: list[dict]) -> list[dict]:
    """Medium level's questions: two stacked signs named "top" and "bottom"."""
    place = ("top ", "bottom ")
    a, b, c = (int(i) for i in rng.integers(2, size=3))
    return _asked((place[a], ordered[a]), (place[b], ordered[b]), (place[c], ordered[c]))


@FAMILIES.register("mixed")
class MixedFamily(Family):
    name = "mixed"
    metric = "exact_match"
    two_expert_tasks = ("describe",)

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        level = level_index(difficulty)
        n, wmin, wmax, (hmin, hmax) = _LEVELS[difficulty]
        colors = sample(rng, list(COLORS), n)
        img = background(rng, size, difficulty)
        draw = ImageDraw.Draw(img)
        words = distinct_words(rng, n, 4)
        if difficulty != "hard":
            signs = _stacked(rng, size, colors, words, (wmin, wmax), (hmin, hmax))
        else:
            signs = _scattered(rng, size, colors, words, (wmin, wmax), (hmin, hmax))
        for s in signs:
            x0, y0, x1, y1 = s["box"]
            radius = max(1, (y1 - y0) // 5)
            draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=radius, fill=COLORS[s["color"]])
            fnt = fit_font(s["word"], (x1 - x0) * 0.85, (y1 - y0) * 0.7, round((y1 - y0) * 0.7))
            draw_text_centered(draw, (x0, y0, x1, y1), s["word"], fnt, TEXT_ON[s["color"]])
        img = add_noise(img, rng, 5.0 if level == 2 else 0.0)
        ordered = sorted(signs, key=_reading_key)
        if difficulty == "easy":
            questions = _asked(*[("", ordered[0])] * 3)
        elif difficulty == "medium":
            questions = _by_place(rng, ordered)
        else:
            target = signs[int(rng.integers(len(signs)))]
            other = signs[int(rng.integers(len(signs)))]
            questions = [
                qa(f"What does the {target['color']} sign say?", target["word"], "read"),
                qa(f"What colour is the sign that says {other['word']}?", other["color"], "colour"),
            ]
        questions.append(
            qa(
                TRANSCRIBE,
                " ".join(s["word"] for s in ordered),
                "transcribe",
                metric="edit_similarity",
            )
        )
        return Item(img, {"signs": signs, "qa": questions})
