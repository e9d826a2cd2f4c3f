"""The metric registry, per-family defaults, and per-record scoring.

Every metric is `(predictions: list[str], references: list[list[str]]) -> float`: a corpus mean in
[0, 1] (CIDEr on pycocoevalcap's ~0-10 scale). Inputs are checked by `check_corpus`: mismatched
lengths, an empty corpus or an item without references raise DataError (a ValueError).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polyvis.errors import DataError
from polyvis.eval.boxes import box_accuracy, box_accuracy_item, box_iou, parse_box
from polyvis.eval.captions import bleu4, bleu4_item_scores, cider, cider_item_scores, tokenize
from polyvis.eval.corpus import check_corpus
from polyvis.eval.text import (
    anls,
    anls_item,
    edit_similarity,
    edit_similarity_item,
    exact_match,
    exact_match_item,
    normalize_answer,
    parse_number,
    relaxed_accuracy,
    relaxed_accuracy_item,
)
from polyvis.registry import Registry, registry

__all__ = [
    "FAMILY_METRICS",
    "METRICS",
    "Metric",
    "anls",
    "bleu4",
    "box_accuracy",
    "box_iou",
    "cider",
    "edit_similarity",
    "exact_match",
    "item_scores",
    "metric_for",
    "normalize_answer",
    "parse_box",
    "parse_number",
    "relaxed_accuracy",
    "score_item",
    "tokenize",
]

CorpusFn = Callable[[list[str], list[list[str]]], float]
ItemsFn = Callable[[list[str], list[list[str]]], list[float]]


@dataclass(frozen=True)
class Metric:
    """A registered metric: call it on a corpus; `items` gives one score per item.

    `per_item` is False for CIDEr, whose item scores depend on the whole corpus (its IDF).
    `top` is a perfect answer's score: 1, except CIDEr-D's 10 (pycocoevalcap scales it by 10).
    """

    name: str
    corpus: CorpusFn
    items: ItemsFn
    per_item: bool
    description: str
    top: float = 1.0

    def __call__(self, predictions: list[str], references: list[list[str]]) -> float:
        return self.corpus(predictions, references)


def _items_of(name: str, item_fn: Callable[[str, Sequence[str]], float]) -> ItemsFn:
    def items(predictions: list[str], references: list[list[str]]) -> list[float]:
        preds, refs = check_corpus(name, predictions, references)
        return [item_fn(p, r) for p, r in zip(preds, refs)]

    return items


METRICS: Registry[Metric] = registry("metric")

for _metric in (
    Metric(
        "exact_match",
        exact_match,
        _items_of("exact_match", exact_match_item),
        True,
        "normalised string equality",
    ),
    Metric(
        "edit_similarity",
        edit_similarity,
        _items_of("edit_similarity", edit_similarity_item),
        True,
        "1 - normalised Levenshtein distance",
    ),
    Metric("anls", anls, _items_of("anls", anls_item), True, "DocVQA ANLS, threshold 0.5"),
    Metric(
        "relaxed_accuracy",
        relaxed_accuracy,
        _items_of("relaxed_accuracy", relaxed_accuracy_item),
        True,
        "ChartQA: numbers within 5 %, else exact match",
    ),
    Metric(
        "box_accuracy",
        box_accuracy,
        _items_of("box_accuracy", box_accuracy_item),
        True,
        "box IoU >= 0.5 with a reference",
    ),
    Metric("bleu4", bleu4, bleu4_item_scores, True, "corpus BLEU-4 (pycocoevalcap)"),
    Metric("cider", cider, cider_item_scores, False, "corpus CIDEr (pycocoevalcap)", top=10.0),
):
    METRICS.add(_metric.name, _metric)

# The primary metric of each task family (DESIGN.md's five families, plus mixed sets and the
# scene family's caption / grounding sub-tasks when records name them as their family).
FAMILY_METRICS: dict[str, str] = {
    "scene": "exact_match",
    "ocr": "exact_match",
    "latex": "edit_similarity",
    "chart": "relaxed_accuracy",
    "table": "anls",
    "mixed": "exact_match",
    "binding": "exact_match",
    "chartbind": "relaxed_accuracy",
    "detail": "exact_match",
    "ocrpage": "exact_match",
    "tablepage": "anls",
    "caption": "cider",
    "grounding": "box_accuracy",
}


def metric_for(record: Mapping[str, Any]) -> str:
    """The metric that scores `record`: its "metric" field, else its family's, else exact_match.

    A family not in FAMILY_METRICS falls back to exact_match; an unknown "metric" is a DataError
    naming the record id and the valid metrics.
    """
    name = record.get("metric")
    if name is None:
        return FAMILY_METRICS.get(record.get("family") or "", "exact_match")
    if name not in METRICS:
        rid = record.get("id", "?")
        raise DataError(
            f"record {rid}: unknown metric {name!r}; valid: {', '.join(METRICS.names())}"
        )
    return name


def group_top(group: str) -> float:
    """A score group's perfect score ("caption" or "scene/cider": CIDEr's 10; others 1), by
    which the leaderboard scales it to 0..1 so that no metric's range outweighs the others in
    a mean."""
    family, _, metric = group.partition("/")
    name = metric or FAMILY_METRICS.get(family, "exact_match")
    return METRICS.get(name).top if name in METRICS else 1.0


def _get(metric: str | Metric) -> Metric:
    return metric if isinstance(metric, Metric) else METRICS.get(metric)


def item_scores(
    metric: str | Metric, predictions: list[str], references: list[list[str]]
) -> list[float]:
    """One score per item. For CIDEr they come from one corpus computation (their mean is the
    corpus CIDEr); for BLEU-4 they are sentence BLEU, whose mean differs from corpus BLEU."""
    return _get(metric).items(predictions, references)


def score_item(metric: str | Metric, prediction: str, references: Sequence[str] | str) -> float:
    """The score of one record on its own.

    BLEU-4 gives the sentence-level score. CIDEr raises ValueError: with one item its IDF is
    zero, so every answer would score 0; score the whole set with `item_scores` instead.
    """
    m = _get(metric)
    if not m.per_item:
        raise ValueError(
            f"{m.name} has no single-item score (its IDF comes from the whole corpus); "
            "use item_scores(metric, predictions, references) on the full set"
        )
    return m.items([prediction], [references])[0]
