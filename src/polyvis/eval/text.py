"""Short-answer metrics: exact match, edit similarity, ANLS (DocVQA), relaxed accuracy (ChartQA).

Each `*_item(prediction, references)` scores one answer against its references (the best
reference wins); the corpus functions `(predictions, references) -> float` average them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from polyvis.eval.corpus import check_corpus, mean

# Sentence-final punctuation a model adds ("Yes." for "yes"); other symbols (%, $, ")") matter.
TRAILING_PUNCTUATION = ".,!?;:"


def normalize_answer(text: str) -> str:
    """Lowercase, strip, collapse runs of whitespace to one space, drop trailing .,!?;:"""
    text = " ".join(text.lower().split())
    return text.rstrip(TRAILING_PUNCTUATION + " ")


def _squash(text: str) -> str:
    return " ".join(text.split())


# ---- exact match ---------------------------------------------------------------------------


def exact_match_item(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    """Mean exact match after `normalize_answer` on both sides."""
    preds, refs = check_corpus("exact_match", predictions, references)
    return mean([exact_match_item(p, r) for p, r in zip(preds, refs)])


# ---- edit similarity -----------------------------------------------------------------------


def edit_similarity_item(prediction: str, references: Sequence[str]) -> float:
    """Best 1 - Levenshtein / max(len) over the references (case kept: LaTeX \\Alpha != \\alpha).

    Whitespace runs are collapsed and the ends stripped first; two empty strings score 1.0.
    """
    pred = _squash(prediction)
    return max(Levenshtein.normalized_similarity(pred, _squash(r)) for r in references)


def edit_similarity(predictions: list[str], references: list[list[str]]) -> float:
    """Mean of 1 - normalised Levenshtein distance (OCR, LaTeX)."""
    preds, refs = check_corpus("edit_similarity", predictions, references)
    return mean([edit_similarity_item(p, r) for p, r in zip(preds, refs)])


# ---- ANLS ----------------------------------------------------------------------------------


def anls_item(prediction: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA ANLS for one question: max over references of 1 - NL, or 0 when NL >= threshold.

    NL is the Levenshtein distance divided by the longer string's length, computed on
    lowercased, stripped, whitespace-collapsed strings.
    """
    pred = _squash(prediction.lower())
    best = 0.0
    for ref in references:
        nl = Levenshtein.normalized_distance(pred, _squash(ref.lower()))
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def anls(predictions: list[str], references: list[list[str]], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity (DocVQA), with the usual 0.5 threshold."""
    preds, refs = check_corpus("anls", predictions, references)
    return mean([anls_item(p, r, threshold) for p, r in zip(preds, refs)])


# ---- relaxed accuracy ----------------------------------------------------------------------

# Optional sign, digits with optional thousands commas ("1,234"), optional decimals, optional %.
_NUMBER = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)?(\.\d+)?(%?)")


def parse_number(text: str) -> float | None:
    """The number an answer states, or None.

    Accepts "3", "3.0", "-0.5", ".5", "1,234" (thousands commas only) and "12%" / "12 %",
    which reads as 0.12, as ChartQA's reference `relaxed_correctness` reads a trailing "%"
    (so "45%" matches "0.45", and "12%" does not match "12"). Trailing sentence punctuation is
    ignored ("12." is 12). Anything else ("12 apples", "1e3", "inf") is None.
    """
    text = normalize_answer(text).replace(" %", "%")
    m = _NUMBER.fullmatch(text)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac, percent = m.groups()
    value = float(f"{sign}{(whole or '0').replace(',', '')}{frac or ''}")
    return value / 100.0 if percent else value


def relaxed_accuracy_item(
    prediction: str, references: Sequence[str], max_relative_change: float = 0.05
) -> float:
    """1.0 when any reference matches: numbers within `max_relative_change` relative error, a
    reference of 0 only by an exact 0, anything non-numeric by normalised exact match."""
    pred_num = parse_number(prediction)
    pred_text = normalize_answer(prediction)
    for ref in references:
        ref_num = parse_number(ref)
        if pred_num is not None and ref_num is not None:
            if ref_num == 0:
                ok = pred_num == 0
            else:
                ok = abs(pred_num - ref_num) / abs(ref_num) <= max_relative_change
        else:
            ok = pred_text == normalize_answer(ref)
        if ok:
            return 1.0
    return 0.0


def relaxed_accuracy(
    predictions: list[str], references: list[list[str]], max_relative_change: float = 0.05
) -> float:
    """ChartQA relaxed accuracy: numeric answers within 5 % count, others need exact match."""
    preds, refs = check_corpus("relaxed_accuracy", predictions, references)
    return mean([relaxed_accuracy_item(p, r, max_relative_change) for p, r in zip(preds, refs)])
