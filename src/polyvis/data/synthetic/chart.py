"""Chart family: bar, line and pie charts drawn with matplotlib (Agg) from known data.

Questions per chart (metric: relaxed accuracy, numbers as plain ints):
- lookup:   "What is the value of B?" -> "42"
- extreme:  "Which label has the largest value?" (or smallest) -> "B"
- compare:  "Which is larger, A or C?" -> "C"
- to_table: "Give the data as a table." -> "A | 12\\nB | 42\\nC | 7" (metric "edit_similarity")
Values within a chart are distinct, so every answer is unique. Difficulty: easy = 3 categories
with values printed, medium = 4, hard = 5-6 categories (3-letter word labels from 128 px up) and (for bar and line) no
printed values, so values must be read off the axis.
"""

from __future__ import annotations

import numpy as np

from polyvis.data.synthetic.base import FAMILIES, Family, Item, qa
from polyvis.data.synthetic.common import (
    COLORS,
    distinct_words,
    figure_to_image,
    level_index,
    new_figure,
    pick,
    px_to_pt,
    sample,
    uniform_int,
)

CHART_TYPES = ("bar", "line", "pie")
LETTERS = "ABCDEFGH"


def random_data(
    rng: np.random.Generator, difficulty: str, size: int, kind: str
) -> tuple[list[str], list[int]]:
    """Distinct labels and distinct integer values (pies: at most 4 wedges of >= 10)."""
    level = level_index(difficulty)
    n = (3, 4, uniform_int(rng, 5, 6))[level]
    if kind == "pie":  # thin wedges leave no room for their label
        n = min(n, 4)
    if level < 2 or size < 128:  # words would overlap on small images: letters there
        labels = list(LETTERS[:n])
    else:
        labels = [w.capitalize() for w in distinct_words(rng, n, 3)]
    lo, hi = (10 if kind == "pie" else 1), (50, 100, 100)[level]
    values = [int(v) + lo for v in rng.permutation(hi - lo + 1)[:n]]
    return labels, values


def draw_chart(
    kind: str, labels: list[str], values: list[int], size: int, show_values: bool, colors: list
) -> object:
    """A Figure of size x size pixels holding the chart."""
    fig = new_figure(size)
    fs = px_to_pt(max(5.0, size / 9))  # tick / label font: readable at 64 px and scales up
    rgb = [tuple(c / 255 for c in COLORS[name]) for name in colors]
    if kind == "pie":
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
        wedges = ax.pie(
            values,
            labels=[f"{lab} {v}" for lab, v in zip(labels, values)],
            colors=rgb,
            startangle=90,
            counterclock=False,
            labeldistance=0.55,
            textprops={"fontsize": fs * 0.85, "ha": "center"},
            wedgeprops={"linewidth": 0.5, "edgecolor": "white"},
        )
        for text in wedges[1]:
            text.set_fontfamily("DejaVu Sans")
        ax.set_aspect("equal")
        return fig
    ax = fig.add_axes((0.25, 0.16, 0.72, 0.78))
    x = np.arange(len(values))
    if kind == "bar":
        ax.bar(x, values, color=rgb[0], width=0.7)
    else:
        ax.plot(x, values, color=rgb[0], marker="o", markersize=max(1.5, size / 40), linewidth=1)
    top = max(values) * 1.25
    ax.set_ylim(0, top)
    ax.set_xlim(-0.6, len(values) - 0.4)
    # Shrink the x labels until the longest fits its bar slot (DejaVu: ~0.62 em per char).
    slot = 0.66 * size / len(labels)
    ax.set_xticks(x, labels, fontsize=min(fs, px_to_pt(slot / (0.62 * max(map(len, labels))))))
    ax.set_yticks(np.linspace(0, 10 * int(top / 10), 3).round().astype(int))
    ax.tick_params(axis="y", labelsize=fs * 0.8, length=2, pad=1)
    ax.tick_params(axis="x", length=0, pad=1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if show_values:
        for xi, v in zip(x, values):
            ax.text(xi, v + top * 0.02, str(v), ha="center", va="bottom", fontsize=fs * 0.8)
    return fig


def chart_questions(rng: np.random.Generator, labels: list[str], values: list[int]) -> list[dict]:
    """The four questions about one chart, answers computed from its data."""
    i = int(rng.integers(len(labels)))
    largest = bool(rng.random() < 0.5)
    best = int(np.argmax(values) if largest else np.argmin(values))
    a, b = (int(k) for k in rng.permutation(len(labels))[:2])
    return [
        qa(f"What is the value of {labels[i]}?", str(values[i]), "lookup"),
        qa(
            f"Which label has the {'largest' if largest else 'smallest'} value?",
            labels[best],
            "extreme",
        ),
        qa(
            f"Which is larger, {labels[a]} or {labels[b]}?",
            labels[a] if values[a] > values[b] else labels[b],
            "compare",
        ),
        qa(
            "Give the data as a table.",
            "\n".join(f"{lab} | {v}" for lab, v in zip(labels, values)),
            "to_table",
            metric="edit_similarity",
        ),
    ]


@FAMILIES.register("chart")
class ChartFamily(Family):
    name = "chart"
    metric = "relaxed_accuracy"

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        kind = pick(rng, CHART_TYPES)
        labels, values = random_data(rng, difficulty, size, kind)
        colors = (
            sample(rng, list(COLORS), len(values)) if kind == "pie" else [pick(rng, list(COLORS))]
        )
        show_values = kind == "pie" or level_index(difficulty) < 2
        img = figure_to_image(draw_chart(kind, labels, values, size, show_values, colors))
        meta = {
            "type": kind,
            "labels": labels,
            "values": values,
            "qa": chart_questions(rng, labels, values),
        }
        return Item(img, meta)
