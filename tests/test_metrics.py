"""Metrics against hand-worked values and against pycocoevalcap called directly."""

from __future__ import annotations

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from polyvis.errors import DataError, RegistryError
from polyvis.eval.metrics import (
    FAMILY_METRICS,
    METRICS,
    anls,
    bleu4,
    box_accuracy,
    box_iou,
    cider,
    edit_similarity,
    exact_match,
    item_scores,
    metric_for,
    normalize_answer,
    parse_box,
    parse_number,
    relaxed_accuracy,
    score_item,
    tokenize,
)

ALL = [
    "exact_match",
    "edit_similarity",
    "anls",
    "relaxed_accuracy",
    "box_accuracy",
    "bleu4",
    "cider",
]


def test_registry_holds_exact_keys():
    assert sorted(METRICS.names()) == sorted(ALL)
    assert METRICS.get("anls")(["a"], [["a"]]) == 1.0
    with pytest.raises(RegistryError, match="valid: anls, bleu4"):
        METRICS.get("ANLS")
    assert all(m in METRICS for m in FAMILY_METRICS.values())


def test_normalize_answer():
    assert normalize_answer("  Two   Cats. ") == "two cats"
    assert normalize_answer("yes ! ?") == "yes"
    assert normalize_answer("12%") == "12%"  # % is not sentence punctuation


def test_exact_match_hand_values():
    preds = ["Yes.", " two  cats ", "no", ""]
    refs = [["yes"], ["dog", "Two cats"], ["yes"], [""]]
    assert exact_match(preds, refs) == 0.75
    assert [score_item("exact_match", p, r) for p, r in zip(preds, refs)] == [1, 1, 0, 1]


def test_edit_similarity_hand_values():
    # kitten -> sitting: 3 edits, longer string 7.
    assert edit_similarity(["kitten"], [["sitting"]]) == pytest.approx(1 - 3 / 7)
    # Best reference wins; case is kept; whitespace runs collapse.
    assert edit_similarity(["x^2 +  y"], [["zzz", "x^2 + y"]]) == 1.0
    assert edit_similarity(["\\Alpha"], [["\\alpha"]]) == pytest.approx(1 - 1 / 6)
    assert edit_similarity([""], [["abcd"]]) == 0.0


def test_anls_hand_values_and_threshold():
    assert anls(["kitten"], [["sitting"]]) == pytest.approx(1 - 3 / 7)  # NL 0.43 < 0.5
    assert anls(["abc"], [["xyz"]]) == 0.0
    assert anls(["HELLO World"], [["hello  world"]]) == 1.0  # case-insensitive
    assert anls(["kitten"], [["xxxxxxxxx", "sitting"]]) == pytest.approx(1 - 3 / 7)
    assert anls(["kitten"], [["sitting"]], threshold=0.4) == 0.0
    # abcd vs abxy: NL exactly 0.5 -> 0 (the cut is NL >= threshold).
    assert anls(["abcd"], [["abxy"]]) == 0.0
    assert anls(["kitten", "abc"], [["sitting"], ["abc"]]) == pytest.approx((4 / 7 + 1) / 2)


def test_parse_number():
    assert parse_number("1,234") == 1234
    assert parse_number("12%") == 0.12  # ChartQA reads a trailing % as / 100
    assert parse_number("12 %") == 0.12
    assert parse_number("-1,250.5%") == -12.505
    assert parse_number("3.0.") == 3
    assert parse_number("-0.5") == -0.5
    assert parse_number(".5") == 0.5
    for bad in ["12 apples", "1e3", "inf", "1,23", "-", "%", ""]:
        assert parse_number(bad) is None, bad


@pytest.mark.parametrize(
    "pred, ref, ok",
    [
        ("104", "100", 1),
        ("95", "100", 1),
        ("105", "100", 1),  # exactly 5 %
        ("106", "100", 0),
        ("45%", "0.45", 1),  # a trailing % is / 100, as in ChartQA: both directions
        ("0.45", "45%", 1),
        ("46%", "0.45", 1),  # within 5 % of 0.45
        ("48%", "0.45", 0),
        ("12%", "12", 0),  # 0.12 is not 12
        ("12", "12%", 0),
        ("12%", "12 %", 1),
        ("1,234", "1234", 1),
        ("3.0", "3", 1),
        ("0", "0", 1),
        ("0.0", "0", 1),
        ("0.01", "0", 0),  # a zero reference needs an exact zero
        ("-5", "-5.2", 1),
        ("Yes", "yes", 1),
        ("Blue.", "blue", 1),
        ("blue", "red", 0),
        ("12 apples", "12", 0),
        ("", "12", 0),
    ],
)
def test_relaxed_accuracy_cases(pred, ref, ok):
    assert relaxed_accuracy([pred], [[ref]]) == ok


def _chartqa_relaxed_correctness(prediction: str, target: str, max_relative_change=0.05) -> bool:
    """ChartQA's reference scorer, as lmms-eval 0.7.3 has it (lmms_eval/tasks/chartqa/utils.py,
    `relaxed_correctness`, taken from Qwen-VL's evaluate_vqa.py)."""

    def _to_float(text: str):
        try:
            if text.endswith("%"):
                return float(text.rstrip("%")) / 100.0
            return float(text)
        except ValueError:
            return None

    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def test_relaxed_accuracy_equals_chartqa_on_plain_numbers_and_percentages():
    # Written the way both read them (no thousands commas, no zero reference, no padding):
    # there polyvis and ChartQA's reference code agree, percentages and plain numbers alike.
    values = ["45%", "0.45", "0.46", "47%", "45", "12", "12%", "12.5", "-3", "-3.1%", "100", "95"]
    values += ["104.9", "106", ".5", "50%", "0.5", "7", "7%", "0.07", "0.0735", "yes", "Yes"]
    for pred in values:
        for ref in values:
            want = float(_chartqa_relaxed_correctness(pred, ref))
            assert relaxed_accuracy([pred], [[ref]]) == want, (pred, ref)


def test_relaxed_accuracy_mean_and_tolerance():
    assert relaxed_accuracy(["104", "110"], [["100"], ["100"]]) == 0.5
    assert relaxed_accuracy(["110"], [["100"]], max_relative_change=0.1) == 1.0
    assert relaxed_accuracy(["110"], [["7", "100.5"]], max_relative_change=0.1) == 1.0


def test_box_iou_hand_values():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([5, 5, 0, 0], [0, 0, 5, 5]) == 0.0  # inverted box has no area
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # degenerate: no union


def test_parse_box():
    assert parse_box("[10, 20, 30.5, 40]") == (10, 20, 30.5, 40)
    assert parse_box("The box is (1,2),(3,4) with score 0.9") == (1, 2, 3, 4)
    assert parse_box("[1, 2, 3]") is None


def test_box_accuracy():
    preds = ["[0, 0, 10, 10]", "[0,0,10,10]", "a box somewhere", "box: 0 0 10 9"]
    refs = [
        ["[0, 0, 10, 10]"],
        ["[5, 0, 15, 10]"],
        ["[0, 0, 10, 10]"],
        ["[50,50,60,60]", "[0,0,10,10]"],
    ]
    # IoUs: 1, 1/3 (below 0.5), unparseable, 0.9 against the second reference.
    assert box_accuracy(preds, refs) == 0.5
    assert box_accuracy(preds[1:2], refs[1:2], iou_threshold=0.3) == 1.0
    with pytest.raises(DataError, match=r"reference 'no box'.*item 1"):
        box_accuracy(["[0,0,1,1]", "[0,0,1,1]"], [["[0,0,1,1]"], ["no box"]])


def test_tokenize():
    assert tokenize("A dog, running!  On black-and-white grass.") == (
        "a dog running on black and white grass"
    )


CAPTIONS = ["A dog runs on the green grass.", "two cats sleep on a red sofa", "a man rides a bike"]
REFS = [
    ["A dog is running on green grass", "a brown dog runs on the grass"],
    ["Two cats are sleeping on a red sofa."],
    ["a person riding a bicycle down the street", "a man on a bike"],
]


def test_bleu4_matches_pycocoevalcap_directly():
    gts = {i: [tokenize(r) for r in rs] for i, rs in enumerate(REFS)}
    res = {i: [tokenize(c)] for i, c in enumerate(CAPTIONS)}
    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu4(CAPTIONS, REFS) == pytest.approx(score[3], abs=1e-12)
    assert item_scores("bleu4", CAPTIONS, REFS) == pytest.approx(scores[3], abs=1e-12)
    assert 0 < bleu4(CAPTIONS, REFS) < 1
    # A single item scores as sentence BLEU, equal to its per-item value in a corpus.
    assert score_item("bleu4", CAPTIONS[0], REFS[0]) == pytest.approx(scores[3][0], abs=1e-12)


def test_bleu4_perfect_match_is_one():
    refs = [["the quick brown fox jumps"], ["over the lazy dog today"]]
    assert bleu4(["The quick brown fox jumps.", "over the lazy dog today"], refs) == pytest.approx(
        1.0, abs=1e-6
    )


def test_cider_matches_pycocoevalcap_and_ranks():
    gts = {i: [tokenize(r) for r in rs] for i, rs in enumerate(REFS)}
    res = {i: [tokenize(c)] for i, c in enumerate(CAPTIONS)}
    direct, per_item = Cider().compute_score(gts, res)
    assert cider(CAPTIONS, REFS) == pytest.approx(direct, abs=1e-12)
    assert item_scores("cider", CAPTIONS, REFS) == pytest.approx(list(per_item), abs=1e-12)

    refs = [["a red ball on the floor"], ["a blue car in the street"], ["green trees in a park"]]
    perfect = cider([r[0] for r in refs], refs)
    wrong = cider(["green trees in a park", "a red ball on the floor", "a blue car"], refs)
    assert perfect > 0
    assert perfect > wrong
    # Corpus CIDEr is the mean of the per-item scores.
    items = item_scores("cider", CAPTIONS, REFS)
    assert cider(CAPTIONS, REFS) == pytest.approx(sum(items) / len(items))


def test_cider_edge_cases():
    # One item: IDF is log(1) - log(1) = 0, so CIDEr is 0 by construction.
    assert cider(["a dog"], [["a dog"]]) == 0.0
    with pytest.raises(ValueError, match="use item_scores"):
        score_item("cider", "a dog", ["a dog"])
    # References with no tokens do not crash pycocoevalcap's document-frequency check.
    assert cider(["a", "b"], [["!!"], ["..."]]) == 0.0
    assert cider(["", "a cat"], [["a dog"], ["a cat"]]) >= 0.0


@pytest.mark.parametrize("name", ALL)
def test_input_errors(name):
    m = METRICS.get(name)
    with pytest.raises(ValueError, match=r"3 predictions but 2 reference lists"):
        m(["a", "b", "c"], [["a"], ["b"]])
    with pytest.raises(DataError, match=f"{name}: empty corpus"):
        m([], [])
    with pytest.raises(DataError, match="item 1 has no references"):
        m(["a", "b"], [["a"], []])
    with pytest.raises(DataError, match="prediction 0 is int, not a string"):
        m([3], [["3"]])


@pytest.mark.parametrize("name", [n for n in ALL if n != "box_accuracy"])
def test_empty_and_none_predictions_score_low_not_crash(name):
    refs = [["some answer text here"], ["another reference"]]
    value = METRICS.get(name)(["", None], refs)
    assert value == pytest.approx(0.0, abs=1e-6)


def test_bare_string_reference_is_one_reference():
    assert exact_match(["yes"], ["yes"]) == 1.0
    assert score_item("anls", "yes", "yes") == 1.0


@pytest.mark.parametrize("name", [n for n in ALL if METRICS.get(n).per_item and n != "bleu4"])
def test_corpus_is_mean_of_items(name):
    # Every reference is a box so that box_accuracy can read them too.
    preds = ["[0,0,10,10]", "[0,0,10,9].", "[5,0,15,10]", "x"]
    refs = [["[0,0,10,9]"], ["[0,0,10,9]"], ["[0,0,10,10]"], ["[1,1,2,2]"]]
    items = [score_item(name, p, r) for p, r in zip(preds, refs)]
    assert items == item_scores(name, preds, refs)
    assert 0 < sum(items) < len(items)  # a mix of hits and misses, not a trivial case
    assert METRICS.get(name)(preds, refs) == pytest.approx(sum(items) / len(items))


def test_metric_for():
    assert metric_for({"id": "a", "metric": "anls", "family": "chart"}) == "anls"
    assert metric_for({"id": "a", "family": "chart"}) == "relaxed_accuracy"
    assert metric_for({"id": "a", "family": "latex"}) == "edit_similarity"
    assert metric_for({"id": "a", "family": "grounding"}) == "box_accuracy"
    assert metric_for({"id": "a"}) == "exact_match"
    assert metric_for({"id": "a", "family": "counting"}) == "exact_match"
    with pytest.raises(DataError, match=r"record chart-7: unknown metric 'bleu'; valid: anls"):
        metric_for({"id": "chart-7", "metric": "bleu"})
    assert FAMILY_METRICS == {
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
