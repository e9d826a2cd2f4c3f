"""Input checks shared by every metric: one prediction and a non-empty reference list per item."""

from __future__ import annotations

from collections.abc import Sequence

from polyvis.errors import DataError


def check_corpus(
    name: str, predictions: Sequence[str | None], references: Sequence[Sequence[str] | str]
) -> tuple[list[str], list[list[str]]]:
    """Validate and normalise a corpus for metric `name`.

    A `None` prediction counts as the empty string (the model said nothing); a bare string
    reference is one reference (wrapped, not split into characters). Raises DataError (a
    ValueError) naming the metric and the bad item: mismatched lengths name both lengths, an
    empty corpus is an error (a mean over nothing is undefined, and 0.0 would hide the bug).
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError(f"{name}: predictions and references must be lists, not a single string")
    if len(predictions) != len(references):
        raise DataError(
            f"{name}: {len(predictions)} predictions but {len(references)} reference lists"
        )
    if not predictions:
        raise DataError(f"{name}: empty corpus (no predictions to score)")
    preds: list[str] = []
    refs: list[list[str]] = []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if pred is None:
            pred = ""
        if not isinstance(pred, str):
            raise DataError(f"{name}: prediction {i} is {type(pred).__name__}, not a string")
        ref_list = [ref] if isinstance(ref, str) else list(ref)
        if not ref_list:
            raise DataError(f"{name}: item {i} has no references")
        for r in ref_list:
            if not isinstance(r, str):
                raise DataError(
                    f"{name}: item {i} has a reference of type {type(r).__name__}, not a string"
                )
        preds.append(pred)
        refs.append(ref_list)
    return preds, refs


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))
