"""Eval data refused when the items are loaded, before any model runs: empty references, a file
given twice, box references without a box, record fields of the wrong type."""

from __future__ import annotations

import re

import pytest

from polyvis.cli import main
from polyvis.data.records import make_record, read_records, write_records
from polyvis.errors import ConfigError, DataError
from polyvis.eval.runner import evaluate, load_items


def _write(tmp_path, name: str, recs: list[dict]):
    return write_records(tmp_path / name, recs)


def test_an_empty_reference_is_refused_in_eval_only(tmp_path, capsys):
    recs = [make_record("q-0", None, [("Say it.", "yes")]), make_record("q-1", None, [("?", "")])]
    path = _write(tmp_path, "val.jsonl", recs)
    assert read_records(path) == recs  # training's rules are its own
    expected = f"{path}: record q-1: empty reference answer"
    with pytest.raises(DataError, match=rf"^{re.escape(expected)}$"):
        load_items(path)
    assert [it.id for it in load_items(path, limit=1)] == ["q-0"]  # only scored records count
    captions = make_record("c-0", None, [("Describe.", "a cat")], references=["a cat", " "])
    with pytest.raises(DataError, match="record c-0: empty reference answer"):
        load_items(_write(tmp_path, "caps.jsonl", [captions]))
    # From the command line: one line, before the (here missing) model is loaded.
    argv = ["eval", str(tmp_path / "no-model"), "--data", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"polyvis: error: {expected}"


def test_a_file_given_twice_is_refused(tmp_path):
    a = _write(tmp_path, "a.jsonl", [make_record("q-0", None, [("?", "x")])])
    b = _write(tmp_path, "b.jsonl", [make_record("q-1", None, [("?", "y")])])
    with pytest.raises(ConfigError, match=rf"^data: {re.escape(str(a))} is given twice$"):
        load_items([a, b, a])
    other_spelling = tmp_path / "sub" / ".." / "a.jsonl"
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=rf"is given twice \(as {re.escape(str(a))}\)$"):
        load_items([a, other_spelling])
    assert [it.id for it in load_items([a, b])] == ["q-0", "q-1"]


def test_ids_equal_as_text_are_refused(tmp_path):
    recs = [make_record(1, None, [("?", "x")]), make_record("1", None, [("?", "y")])]
    path = _write(tmp_path, "val.jsonl", recs)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: record id '1' is also in "):
        load_items(path)


def test_box_references_are_checked_before_the_model_runs(tmp_path):
    recs = [
        make_record("g-0", None, [("Where?", "[1, 2, 3, 4]")]),
        make_record("g-1", None, [("Where?", "no box here")]),
    ]
    path = _write(tmp_path, "val.jsonl", recs)
    expected = f"{path}: record g-1: box_accuracy reference 'no box here' has fewer than 4 numbers"
    with pytest.raises(DataError, match=rf"^{re.escape(expected)}"):
        evaluate(None, None, [path], metric="box_accuracy", progress=False)  # no model needed
    grounding = [{**r, "family": "grounding"} for r in recs]  # the family's own metric too
    with pytest.raises(DataError, match="record g-1: box_accuracy reference"):
        load_items(_write(tmp_path, "grounding.jsonl", grounding))
    assert len(load_items(path)) == 2  # exact match needs no box


def test_a_box_reference_without_area_is_refused(tmp_path):
    recs = [make_record("g-0", None, [("Where?", "[11, 5, 11, 8]")])]
    path = _write(tmp_path, "val.jsonl", recs)
    expected = f"{path}: record g-0: box_accuracy reference '[11, 5, 11, 8]' has no area"
    with pytest.raises(DataError, match=rf"^{re.escape(expected)}"):
        load_items(path, metric="box_accuracy")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("family", ["scene"], "1 bad record(s): q-0: 'family' must be a string, not list"),
        ("metric", ["anls"], "record q-0: 'metric' must be a metric name (a string)"),
    ],
)
def test_a_record_field_of_the_wrong_type_is_one_line(tmp_path, capsys, field, value, message):
    path = _write(tmp_path, "val.jsonl", [make_record("q-0", None, [("?", "x")], **{field: value})])
    with pytest.raises(DataError, match=rf"^{re.escape(f'{path}: {message}')}$"):
        load_items(path)
    if field == "metric":  # --metric overrides the record's own, as for an unknown name
        assert load_items(path, metric="anls")[0].metric == "anls"
    argv = ["eval", str(tmp_path / "no-model"), "--data", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"polyvis: error: {path}: {message}"
