"""Caption metrics: corpus BLEU-4 and CIDEr from pycocoevalcap's pure-Python scorers.

pycocoevalcap normally tokenises with the Stanford PTBTokenizer, which needs Java; `tokenize`
replaces it: lowercase, every non-word character (punctuation) becomes a space, split on
whitespace. So "A dog, running!" -> "a dog running" and "black-and-white" -> "black and white".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from polyvis.eval.corpus import check_corpus

_PUNCT = re.compile(r"[^\w\s]|_")


def tokenize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace-joined tokens (what the scorers split on)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _coco_inputs(
    preds: Sequence[str], refs: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's (gts, res) dicts: image id -> tokenised references / [hypothesis]."""
    gts = {i: [tokenize(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [tokenize(p)] for i, p in enumerate(preds)}
    return gts, res


def _bleu(predictions: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    preds, refs = check_corpus("bleu4", predictions, references)
    gts, res = _coco_inputs(preds, refs)
    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    return float(score[3]), [float(s) for s in scores[3]]


def bleu4(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (n-gram counts pooled over the corpus, 'closest' reference length).

    This is not the mean of the per-item scores; see `bleu4_item_scores`.
    """
    return _bleu(predictions, references)[0]


def bleu4_item_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Sentence-level BLEU-4 of each item, as pycocoevalcap reports it per image."""
    return _bleu(predictions, references)[1]


def cider_item_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Each item's CIDEr-D-style score (pycocoevalcap 'CIDEr'), with IDF from the whole corpus.

    The IDF is log(number of items) minus log(document frequency), so a one-item corpus scores
    0 by construction: CIDEr only means something over a corpus.
    """
    preds, refs = check_corpus("cider", predictions, references)
    gts, res = _coco_inputs(preds, refs)
    if not any(r for rs in gts.values() for r in rs):
        # Every reference tokenises to nothing: no n-gram has a document frequency and
        # pycocoevalcap's own sanity check (max over an empty dict) would crash.
        return [0.0] * len(preds)
    _, scores = Cider().compute_score(gts, res)
    return [float(s) for s in scores]


def cider(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr on pycocoevalcap's scale (about 0-10; 10x the mean n-gram cosine)."""
    scores = cider_item_scores(predictions, references)
    return float(sum(scores) / len(scores))
