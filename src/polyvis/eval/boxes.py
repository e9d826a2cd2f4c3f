"""Grounding: boxes written as text ("[x1, y1, x2, y2]") scored by IoU."""

from __future__ import annotations

import re
from collections.abc import Sequence

from polyvis.data.boxes import BOX_RE
from polyvis.errors import ConfigError, DataError
from polyvis.eval.corpus import check_corpus, mean

_NUM = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")

Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box | None:
    """The box in `text` as (x1, y1, x2, y2): its first "[x1, y1, x2, y2]", else its first four
    numbers; None when it has fewer.

    The bracketed box comes first so that numbers before it ("1. [10, 20, 30, 40]", "2 cats at
    [...]") are not read as corners: it is the box `parse_boxes` draws in the reports and chat.
    Any other wrapping works too: "(10,20),(30,40)", "box: 10 20 30 40".
    """
    bracketed = BOX_RE.search(text)
    nums = bracketed.groups() if bracketed else _NUM.findall(text)
    if len(nums) < 4:
        return None
    x1, y1, x2, y2 = (float(n) for n in nums[:4])
    return x1, y1, x2, y2


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes.

    A box with x2 <= x1 or y2 <= y1 has zero area, so it overlaps nothing (IoU 0).
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def check_iou_threshold(value: float) -> None:
    """A threshold in (0, 1]: at 0 boxes that do not overlap at all would count as found (IoU 0
    >= 0), above 1 nothing would."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
    if not ok:
        raise ConfigError("iou_threshold", f"must be a number in (0, 1], got {value!r}")


def box_accuracy_item(
    prediction: str, references: Sequence[str], iou_threshold: float = 0.5
) -> float:
    """1.0 when the predicted box reaches `iou_threshold` IoU with any reference box.

    An unparseable prediction scores 0; an unparseable reference is a data error.
    """
    check_iou_threshold(iou_threshold)
    ref_boxes = []
    for ref in references:
        box = parse_box(ref)
        if box is None:
            raise DataError(f"box_accuracy: reference {ref!r} has fewer than 4 numbers")
        ref_boxes.append(box)
    pred = parse_box(prediction)
    if pred is None:
        return 0.0
    return float(any(box_iou(pred, r) >= iou_threshold for r in ref_boxes))


def box_accuracy(
    predictions: list[str], references: list[list[str]], iou_threshold: float = 0.5
) -> float:
    """Fraction of predicted boxes with IoU >= `iou_threshold` against some reference box."""
    check_iou_threshold(iou_threshold)
    preds, refs = check_corpus("box_accuracy", predictions, references)
    scores = []
    for i, (p, r) in enumerate(zip(preds, refs)):
        try:
            scores.append(box_accuracy_item(p, r, iou_threshold))
        except DataError as err:
            raise DataError(f"{err} (item {i})") from None
    return mean(scores)
