"""Converters called from Python with typed params (no CLI), their option errors, the docs'
example converter, and the folder converter's metric, which is checked when evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from _converter_cli import convert, convert_error, png, qa
from polyvis.cli import main
from polyvis.data.converters import CONVERTERS, get_converter, run_converter
from polyvis.data.converters.chartqa import ChartQAParams
from polyvis.data.converters.coco import TASKS, COCOParams
from polyvis.data.converters.dvqa import DVQAParams
from polyvis.data.records import read_records
from polyvis.errors import ConfigError, DataError
from polyvis.eval.metrics import METRICS
from polyvis.eval.runner import load_items
from test_converters import chartqa_fixture, dvqa_fixture
from test_converters_more import folder_fixture

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_python_calls_give_the_cli_records(tmp_path):
    root = chartqa_fixture(tmp_path)
    cli = convert("chartqa", ["--root", root, "--subsets", "human", "--tables"], tmp_path / "cli")
    params = ChartQAParams(root=root, subsets="human", tables=True)
    assert params.subsets == ("human",) and params.split == "train"
    assert get_converter("chartqa").convert(params, tmp_path / "py") == cli
    path, records = run_converter(
        "chartqa", tmp_path / "run", root=str(root), subsets=["human"], tables=True
    )
    assert path == tmp_path / "run" / "train.jsonl"
    assert records == cli and read_records(path) == cli


def test_python_call_with_split_and_limit(tmp_path):
    root = dvqa_fixture(tmp_path)
    params = DVQAParams(root=root, split="train", limit=1)
    assert get_converter("dvqa").convert(params, tmp_path / "o") == convert(
        "dvqa", ["--root", root, "--limit", "1"], tmp_path / "cli"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"root": "x", "limit": -1}, "limit: Input should be greater than or equal to 0"),
        (
            {"root": "x", "subsets": "human,nope"},
            "subsets: unknown subset 'nope'; valid: human, augmented",
        ),
        ({"root": "x", "subsets": ""}, "subsets: unknown subset ''; valid: human, augmented"),
        (
            {"root": "x", "tables": "maybe"},
            "tables: Input should be a valid boolean, unable to interpret input",
        ),
        ({"root": "x", "colour": "red"}, "colour: unknown field"),
        ({}, "root: Field required"),
        (  # a split is a file name inside OUT: it cannot write elsewhere
            {"root": "x", "split": "../evil"},
            "split: a file name of letters, digits and _ . + - is needed, got '../evil'",
        ),
    ],
)
def test_bad_params_are_one_line_config_errors_naming_the_option(tmp_path, options, message):
    with pytest.raises(ConfigError) as err:
        run_converter("chartqa", tmp_path, **options)
    assert str(err.value) == message
    assert not any(tmp_path.iterdir())  # nothing written


def test_checks_across_options_name_the_option():
    with pytest.raises(ConfigError, match=r"^root: give the DVQA folder, or both qa and images$"):
        DVQAParams(qa="qa.json")
    with pytest.raises(ConfigError) as err:
        COCOParams(annotations="a.json", images="im", tasks="count,colours")
    assert str(err.value) == f"tasks: unknown task 'colours'; valid: {', '.join(TASKS)}"
    assert COCOParams(annotations="a.json", images="im", tasks="").tasks == ()


def test_cli_names_the_option_as_typed(tmp_path, capsys):
    root = chartqa_fixture(tmp_path)
    err = convert_error("chartqa", ["--root", root, "--limit", "-1"], tmp_path / "o", capsys)
    assert err == "polyvis: error: --limit: Input should be greater than or equal to 0"
    err = convert_error(
        "coco",
        ["--annotations", "a", "--images", "i", "--max-caption-objects", "x"],
        tmp_path,
        capsys,
    )
    assert err.startswith("polyvis: error: --max-caption-objects: Input should be a valid integer")


def test_folder_metric_is_checked_when_the_records_are_evaluated(tmp_path):
    csv_path = folder_fixture(
        tmp_path, [["image", "question", "answer", "metric"], ["b.png", "Q?", "A", "bleu"]]
    )
    path, records = run_converter("folder", tmp_path / "out", csv=csv_path)
    assert records[0]["metric"] == "bleu"  # the converter does not know the eval metrics
    with pytest.raises(DataError) as err:
        load_items(path)
    valid = ", ".join(METRICS.names())
    assert str(err.value) == f"record folder-train-000002: unknown metric 'bleu'; valid: {valid}"
    assert load_items(path, metric="anls")[0].metric == "anls"  # an override scores it anyway


def test_the_docs_example_converter_runs(tmp_path, monkeypatch):
    text = (DOCS / "converters.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding a converter") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setattr(CONVERTERS, "_items", dict(CONVERTERS._items))  # registers for this test
    exec(compile(code, "docs/converters.md", "exec", dont_inherit=True), {"__name__": "docs_words"})
    raw = tmp_path / "raw"
    png(raw / "a.png")
    png(raw / "b.png")
    words = raw / "words.tsv"
    words.write_text("a.png\tHELLO\nb.png\t world\n", encoding="utf-8")

    path, records = run_converter("words", tmp_path / "out", words=words)
    assert [qa(r) for r in records] == [
        ("<image>\nWhat does the text say?", "HELLO"),
        ("<image>\nWhat does the text say?", "world"),
    ]
    assert [r["id"] for r in records] == ["words-train-000001", "words-train-000002"]
    assert records[0]["image"] == "../raw/a.png" and records[0]["family"] == "ocr"
    assert get_converter("words").help == "word images + a list of their words -> OCR questions"
    argv = ["data", "convert", "words", "--words", str(words), "--out", str(tmp_path / "cli")]
    assert main([*argv, "--split", "val", "--limit", "1"]) == 0
    assert (
        read_records(tmp_path / "cli" / "val.jsonl")[0]["conversations"]
        == records[0]["conversations"]
    )
    words.write_text("a.png HELLO\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"words\.tsv:1: expected 'IMAGE<TAB>WORD'"):
        run_converter("words", tmp_path / "bad", words=words)
