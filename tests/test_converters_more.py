"""Real-data converters (PubTabNet, TextCaps, image folder + CSV) through `polyvis data convert`,
on tiny fixtures written in each dataset's real format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from _converter_cli import convert, convert_error, png, qa, write_json
from polyvis.data.converters.pubtabnet import table_grid, table_html, table_markdown

# ---------------------------------------------------------------- pubtabnet

# header "Name | Score" (Score spans 2 columns), body: "a" spans 2 rows, "<b>1</b>", "x|y";
# then the row below "a" holds "2" and an empty cell.
SPAN_STRUCTURE = [
    "<thead>",
    "<tr>",
    "<td>",
    "</td>",
    "<td",
    ' colspan="2"',
    ">",
    "</td>",
    "</tr>",
    "</thead>",
    "<tbody>",
    "<tr>",
    "<td",
    ' rowspan="2"',
    ">",
    "</td>",
    "<td>",
    "</td>",
    "<td>",
    "</td>",
    "</tr>",
    "<tr>",
    "<td>",
    "</td>",
    "<td>",
    "</td>",
    "</tr>",
    "</tbody>",
]
SPAN_CELLS = [
    {"tokens": list("Name"), "bbox": [1, 1, 9, 5]},
    {"tokens": list("Score"), "bbox": [10, 1, 30, 5]},
    {"tokens": ["a"], "bbox": [1, 6, 3, 12]},
    {"tokens": ["<b>", "1", "</b>"], "bbox": [10, 6, 12, 8]},
    {"tokens": list("x|y&"), "bbox": [20, 6, 24, 8]},
    {"tokens": ["2"], "bbox": [10, 9, 12, 11]},
    {"tokens": []},
]


def test_pubtabnet_grid_and_html():
    tokens, cells = SPAN_STRUCTURE, [c["tokens"] for c in SPAN_CELLS]
    assert table_grid(tokens, cells) == [
        ["Name", "Score", ""],
        ["a", "1", "x\\|y&"],
        ["", "2", ""],
    ]
    assert table_markdown(tokens, cells) == (
        "| Name | Score |  |\n| --- | --- | --- |\n| a | 1 | x\\|y& |\n|  | 2 |  |"
    )
    assert table_html(tokens, cells) == (
        '<table><thead><tr><td>Name</td><td colspan="2">Score</td></tr></thead><tbody>'
        '<tr><td rowspan="2">a</td><td><b>1</b></td><td>x|y&amp;</td></tr>'
        "<tr><td>2</td><td></td></tr></tbody></table>"
    )


def pubtabnet_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "pubtabnet"
    simple = ["<tbody>", "<tr>", "<td>", "</td>", "<td>", "</td>", "</tr>", "</tbody>"]
    lines = [
        {
            "filename": "PMC1_001_00.png",
            "split": "train",
            "imgid": 0,
            "html": {"structure": {"tokens": SPAN_STRUCTURE}, "cells": SPAN_CELLS},
        },
        {
            "filename": "PMC2_002_00.png",
            "split": "val",
            "imgid": 1,
            "html": {
                "structure": {"tokens": simple},
                "cells": [{"tokens": ["k"]}, {"tokens": ["v"]}],
            },
        },
        {
            "filename": "PMC3_003_00.png",
            "split": "train",
            "imgid": 2,
            "html": {
                "structure": {"tokens": simple},
                "cells": [{"tokens": ["k"]}, {"tokens": ["7"]}],
            },
        },
    ]
    root.mkdir()
    (root / "PubTabNet_2.0.0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    png(root / "train" / "PMC1_001_00.png")
    png(root / "train" / "PMC3_003_00.png")
    png(root / "val" / "PMC2_002_00.png")
    return root / "PubTabNet_2.0.0.jsonl"


def test_pubtabnet(tmp_path):
    ann = pubtabnet_fixture(tmp_path)
    recs = convert("pubtabnet", ["--annotations", ann], tmp_path / "out")
    assert [r["id"] for r in recs] == ["pubtabnet-train-0", "pubtabnet-train-2"]
    cells = [c["tokens"] for c in SPAN_CELLS]
    assert qa(recs[0]) == (
        "<image>\nTranscribe the table as markdown.",
        table_markdown(SPAN_STRUCTURE, cells),
    )
    assert qa(recs[1])[1] == "| k | 7 |\n| --- | --- |"
    assert {(r["family"], r["metric"]) for r in recs} == {("table", "edit_similarity")}
    val = convert("pubtabnet", ["--annotations", ann, "--target", "html"], tmp_path / "out", "val")
    assert qa(val[0]) == (
        "<image>\nTranscribe the table as HTML.",
        "<table><tbody><tr><td>k</td><td>v</td></tr></tbody></table>",
    )
    assert val[0]["image"] == "../pubtabnet/val/PMC2_002_00.png"


def test_pubtabnet_errors(tmp_path, capsys):
    ann = pubtabnet_fixture(tmp_path)
    lines = ann.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["html"]["cells"].pop()
    ann.write_text("\n".join([*lines[:2], json.dumps(bad)]) + "\n")
    err = convert_error("pubtabnet", ["--annotations", ann], tmp_path / "out", capsys)
    assert f"{ann}:3 (PMC3_003_00.png): 2 <td> in the structure but 1 cells" in err
    ann.write_text(lines[0] + "\n{oops\n")
    err = convert_error("pubtabnet", ["--annotations", ann], tmp_path / "out", capsys)
    assert f"{ann}:2: not valid JSON" in err


# ---------------------------------------------------------------- textcaps


def textcaps_fixture(tmp_path: Path) -> list:
    images = tmp_path / "train_images"  # TextVQA keeps the images flat
    png(images / "011e7e629fb9ae7b.jpg")
    png(images / "0a0bc91825468c45.jpg")
    refs = ["A sign that says STOP.", "a red stop sign"]
    data = {
        "dataset_type": "train",
        "dataset_name": "textcaps",
        "dataset_version": "0.1",
        "data": [
            {
                "image_id": "011e7e629fb9ae7b",
                "image_path": "train/011e7e629fb9ae7b.jpg",
                "set_name": "train",
                "caption_id": 7,
                "caption_str": refs[0],
                "reference_strs": refs,
            },
            {
                "image_id": "011e7e629fb9ae7b",
                "image_path": "train/011e7e629fb9ae7b.jpg",
                "set_name": "train",
                "caption_id": 8,
                "caption_str": refs[1],
                "reference_strs": refs,
            },
            {
                "image_id": "0a0bc91825468c45",
                "image_path": "train/0a0bc91825468c45.jpg",
                "set_name": "train",
                "caption_id": 9,
                "caption_str": "a bottle of  COKE",
                "reference_strs": ["a bottle of  COKE"],
            },
        ],
    }
    ann = write_json(tmp_path / "TextCaps_0.1_train.json", data)
    return ["--annotations", ann, "--images", images]


def test_textcaps(tmp_path):
    args = textcaps_fixture(tmp_path)
    recs = convert("textcaps", args, tmp_path / "out")
    assert [r["id"] for r in recs] == [
        "textcaps-train-011e7e629fb9ae7b",
        "textcaps-train-0a0bc91825468c45",
    ]
    assert qa(recs[0]) == (
        "<image>\nDescribe the image, including any text in it.",
        "A sign that says STOP.",
    )
    assert recs[0]["references"] == ["A sign that says STOP.", "a red stop sign"]
    assert qa(recs[1])[1] == "a bottle of COKE"
    assert {(r["family"], r["metric"]) for r in recs} == {("ocr", "cider")}
    assert recs[0]["image"] == "../train_images/011e7e629fb9ae7b.jpg"  # base-name fallback
    per = convert("textcaps", [*args, "--per-caption"], tmp_path / "out")
    assert [qa(r)[1] for r in per] == [
        "A sign that says STOP.",
        "a red stop sign",
        "a bottle of COKE",
    ]
    assert per[1]["id"] == "textcaps-train-011e7e629fb9ae7b-8"


def test_textcaps_errors(tmp_path, capsys):
    args = textcaps_fixture(tmp_path)
    ann = args[1]
    data = json.loads(ann.read_text())
    for key in ("caption_str", "reference_strs"):
        del data["data"][2][key]
    write_json(ann, data)
    err = convert_error("textcaps", args, tmp_path / "out", capsys)
    assert f"{ann}: data[2] (image_id 0a0bc91825468c45): has no 'caption_str'" in err
    err = convert_error("textcaps", args, tmp_path / "out", capsys, split="val")
    assert "no entries for split 'val' (splits present: train)" in err


# ---------------------------------------------------------------- folder


def folder_fixture(tmp_path: Path, rows: list[list[str]]) -> Path:
    root = tmp_path / "mydata"
    png(root / "receipts" / "001.png")
    png(root / "b.png")
    path = root / "qa.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_folder(tmp_path):
    path = folder_fixture(
        tmp_path,
        [
            ["image", "question", "answer", "family", "metric"],
            ["receipts/001.png", "What is the total?", "12.50", "ocr", ""],
            ["b.png", "Which bar is tallest, A or B?", "B", "", "exact_match"],
            ["", "What is 2 + 2?", "4", "", ""],
        ],
    )
    recs = convert("folder", ["--csv", path, "--family", "mixed"], tmp_path / "out")
    assert [qa(r) for r in recs] == [
        ("<image>\nWhat is the total?", "12.50"),
        ("<image>\nWhich bar is tallest, A or B?", "B"),
        ("What is 2 + 2?", "4"),
    ]
    assert [r.get("family") for r in recs] == ["ocr", "mixed", "mixed"]
    assert recs[1]["metric"] == "exact_match" and "image" not in recs[2]
    assert (
        recs[0]["id"] == "folder-train-000002" and recs[0]["image"] == "../mydata/receipts/001.png"
    )


def test_folder_split_column(tmp_path):
    path = folder_fixture(
        tmp_path,
        [
            ["image", "question", "answer", "split", "id"],
            ["b.png", "Q1?", "A1", "train", "q1"],
            ["b.png", "Q2?", "A2", "test", "q2"],
        ],
    )
    recs = convert("folder", ["--csv", path], tmp_path / "out", split="test")
    assert [(r["id"], qa(r)[1]) for r in recs] == [("q2", "A2")]


def test_folder_errors(tmp_path, capsys):
    path = folder_fixture(tmp_path, [["image", "question"], ["b.png", "Q?"]])
    err = convert_error("folder", ["--csv", path], tmp_path / "out", capsys)
    assert f"{path}: missing column 'answer'" in err
    path = folder_fixture(
        tmp_path, [["image", "question", "answer"], ["b.png", "Q?", "A"], ["b.png", "Q?", ""]]
    )
    err = convert_error("folder", ["--csv", path], tmp_path / "out", capsys)
    assert f"{path}:3: empty 'answer'" in err
    path = folder_fixture(tmp_path, [["image", "question", "answer"], ["nope.png", "Q?", "A"]])
    err = convert_error("folder", ["--csv", path], tmp_path / "out", capsys)
    assert str(path.parent / "nope.png") in err and f"{path}:2" in err
