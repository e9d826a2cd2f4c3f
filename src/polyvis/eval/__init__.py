"""Evaluation: metrics per task family, and reports that compare runs."""

from polyvis.eval.metrics import (
    FAMILY_METRICS,
    METRICS,
    Metric,
    anls,
    bleu4,
    box_accuracy,
    box_iou,
    cider,
    edit_similarity,
    exact_match,
    item_scores,
    metric_for,
    relaxed_accuracy,
    score_item,
)
from polyvis.eval.report import compare, load_results, write_report

__all__ = [
    "FAMILY_METRICS",
    "METRICS",
    "Metric",
    "anls",
    "bleu4",
    "box_accuracy",
    "box_iou",
    "cider",
    "compare",
    "edit_similarity",
    "exact_match",
    "item_scores",
    "load_results",
    "metric_for",
    "relaxed_accuracy",
    "score_item",
    "write_report",
]
