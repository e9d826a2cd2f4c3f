"""Real-data converters (RefCOCO, im2latex, ChartQA, DVQA) through `polyvis data convert`,
on tiny fixtures written in each dataset's real format."""

from __future__ import annotations

import json
from pathlib import Path

from _converter_cli import convert, convert_error, png, qa, write_json
from polyvis.data.converters import load_converters
from polyvis.data.converters.coco import box_text

KINDS = ("chartqa", "dvqa", "folder", "im2latex", "pubtabnet", "refcoco", "textcaps")


def test_all_converters_registered():
    assert set(KINDS) <= set(load_converters())


# ---------------------------------------------------------------- refcoco


def refcoco_fixture(tmp_path: Path) -> list:
    images = tmp_path / "train2014"
    png(images / "COCO_train2014_000000000001.jpg")
    png(images / "COCO_train2014_000000000002.jpg")
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 32, "height": 32},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 32, "height": 32},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10.2, 19.6, 30, 40],
                "area": 1200,
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "bbox": [0, 0, 5, 5],
                "area": 25,
                "iscrowd": 0,
            },
            {
                "id": 21,
                "image_id": 2,
                "category_id": 1,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    refs = [
        {
            "ref_id": 0,
            "image_id": 1,
            "ann_id": 11,
            "category_id": 1,
            "split": "train",
            "file_name": "COCO_train2014_000000000001_11.jpg",
            "sent_ids": [0, 1],
            "sentences": [
                {"tokens": ["man", "left"], "raw": "Man  left", "sent": "man left", "sent_id": 0},
                {"raw": "the guy in red", "sent_id": 1},
            ],
        },
        {
            "ref_id": 1,
            "image_id": 1,
            "ann_id": 12,
            "split": "train",
            "sentences": [{"sent": "small dog"}],
        },
        {
            "ref_id": 2,
            "image_id": 2,
            "ann_id": 21,
            "split": "testA",
            "sentences": [{"sent": "person"}],
        },
    ]
    inst = write_json(tmp_path / "instances.json", instances)
    refs_path = write_json(tmp_path / "refs.json", refs)
    return ["--refs", refs_path, "--instances", inst, "--images", images]


def test_refcoco(tmp_path):
    args = [*refcoco_fixture(tmp_path), "--box-format", "pixels"]  # norm1000: test_box_format
    recs = convert("refcoco", args, tmp_path / "out")
    assert [r["id"] for r in recs] == [
        "refcoco-train-0-0",
        "refcoco-train-0-1",
        "refcoco-train-1-0",
    ]
    assert qa(recs[0]) == (
        '<image>\nWhere is "man left"? Answer with a box [x1, y1, x2, y2].',
        "[10, 20, 40, 60]",
    )
    assert qa(recs[1])[0].startswith('<image>\nWhere is "the guy in red"?')  # raw when no sent
    assert qa(recs[2])[1] == box_text([0, 0, 5, 5]) == "[0, 0, 5, 5]"
    assert {(r["family"], r["metric"]) for r in recs} == {("scene", "box_accuracy")}
    assert recs[0]["image"] == "../train2014/COCO_train2014_000000000001.jpg"
    test = convert("refcoco", args, tmp_path / "out", split="testA")
    assert [qa(r)[1] for r in test] == ["[1, 2, 4, 6]"]


def test_refcoco_errors(tmp_path, capsys):
    args = refcoco_fixture(tmp_path)
    refs_path = args[1]
    refs = json.loads(refs_path.read_text())
    err = convert_error("refcoco", args, tmp_path / "out", capsys, split="val")
    assert str(refs_path) in err and "splits present: testA, train" in err
    refs[1]["ann_id"] = 999
    write_json(refs_path, refs)
    err = convert_error("refcoco", args, tmp_path / "out", capsys)
    assert f"{refs_path}: ref_id 1: ann_id 999 is not in the instances file" in err


# ---------------------------------------------------------------- im2latex


def im2latex_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "im2latex"
    formulas = [r"\frac{a}{b}", "x ^ {2}\r+ 1", r"\alpha  +  \beta"]
    (root / "formula_images").mkdir(parents=True)
    (root / "im2latex_formulas.lst").write_bytes(("\n".join(formulas) + "\n").encode())
    (root / "im2latex_train.lst").write_text("0 66667cee5b basic\n2 1f2e3d4c5b basic\n")
    (root / "im2latex_validate.lst").write_text("1 7944775fc9 basic\n")
    for name in ("66667cee5b", "1f2e3d4c5b", "7944775fc9"):
        png(root / "formula_images" / f"{name}.png")
    return root


def test_im2latex(tmp_path):
    root = im2latex_fixture(tmp_path)
    args = ["--formulas", root / "im2latex_formulas.lst"]
    recs = convert("im2latex", args, tmp_path / "out")
    assert [qa(r) for r in recs] == [
        ("<image>\nWrite the LaTeX for the formula.", r"\frac{a}{b}"),
        ("<image>\nWrite the LaTeX for the formula.", r"\alpha + \beta"),
    ]
    assert recs[0]["id"] == "im2latex-train-66667cee5b" and recs[0]["family"] == "latex"
    assert recs[0]["image"] == "../im2latex/formula_images/66667cee5b.png"
    # "\r" inside formula 1 does not shift the indices; --split val reads the validate list
    val = convert("im2latex", args, tmp_path / "out", split="val")
    assert [qa(r)[1] for r in val] == ["x ^ {2} + 1"]
    # im2markup's filtered list format: "image_name.png formula_idx"
    (root / "filtered.lst").write_text("1f2e3d4c5b.png 0\n")
    recs = convert("im2latex", [*args, "--list", root / "filtered.lst"], tmp_path / "out2")
    assert [qa(r)[1] for r in recs] == [r"\frac{a}{b}"]


def test_im2latex_errors(tmp_path, capsys):
    root = im2latex_fixture(tmp_path)
    args = ["--formulas", root / "im2latex_formulas.lst"]
    (root / "im2latex_train.lst").write_text("0 66667cee5b basic\n9 1f2e3d4c5b basic\n")
    err = convert_error("im2latex", args, tmp_path / "out", capsys)
    assert f"{root / 'im2latex_train.lst'}:2: formula index 9 is past" in err
    assert "(3 lines)" in err  # the file's final newline starts no fourth formula
    (root / "im2latex_train.lst").write_text("0 66667cee5b basic\nnot-a-line\n")
    err = convert_error("im2latex", args, tmp_path / "out", capsys)
    assert f"{root / 'im2latex_train.lst'}:2: expected" in err and "not-a-line" in err


# ---------------------------------------------------------------- chartqa


def chartqa_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "ChartQA Dataset"
    split = root / "train"
    png(split / "png" / "a.png")
    png(split / "png" / "b.png")
    write_json(
        split / "train_human.json",
        [{"imgname": "a.png", "query": "What is the value of X?", "label": "12"}],
    )
    write_json(
        split / "train_augmented.json",
        [
            {"imgname": "b.png", "query": "How many bars?", "label": 3.0},
            {"imgname": "a.png", "query": "Is X the largest?", "label": "Yes"},
        ],
    )
    (split / "tables").mkdir()
    (split / "tables" / "a.csv").write_text("Label,Value\nX,12\nY,7\n")
    (split / "tables" / "b.csv").write_text("Label,Value\nP,1\n")
    return root


def test_chartqa(tmp_path):
    root = chartqa_fixture(tmp_path)
    recs = convert("chartqa", ["--root", root], tmp_path / "out")
    assert [(qa(r), r["source"]) for r in recs] == [
        (("<image>\nWhat is the value of X?", "12"), "human"),
        (("<image>\nHow many bars?", "3"), "augmented"),
        (("<image>\nIs X the largest?", "Yes"), "augmented"),
    ]
    assert {r["family"] for r in recs} == {"chart"} and "metric" not in recs[0]
    assert len({r["id"] for r in recs}) == 3
    human = convert("chartqa", ["--root", root, "--subsets", "human", "--tables"], tmp_path / "o2")
    assert [qa(r)[1] for r in human] == ["12", "Label | Value\nX | 12\nY | 7"]
    assert human[1]["metric"] == "edit_similarity" and human[1]["image"] == human[0]["image"]


def test_chartqa_errors(tmp_path, capsys):
    root = chartqa_fixture(tmp_path)
    qa_path = write_json(root / "train" / "train_human.json", [{"imgname": "a.png", "query": "Q?"}])
    err = convert_error("chartqa", ["--root", root], tmp_path / "out", capsys)
    assert f"{qa_path}: entry 0: has no 'label'" in err


# ---------------------------------------------------------------- dvqa


def dvqa_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "DVQA"
    png(root / "images" / "bar_train_00000000.png")
    png(root / "images" / "bar_train_00000001.png")
    write_json(
        root / "qa" / "train_qa.json",
        [
            {
                "image": "bar_train_00000000.png",
                "question": "How many bars are there?",
                "answer": 3,
                "question_id": 1407,
                "template_id": "structure",
                "answer_bbox": [],
            },
            {
                "image": "bar_train_00000001.png",
                "question": "What is the label of the first bar?",
                "answer": "tip",
                "question_id": 1408,
                "template_id": "data",
            },
        ],
    )
    return root


def test_dvqa(tmp_path):
    root = dvqa_fixture(tmp_path)
    recs = convert("dvqa", ["--root", root], tmp_path / "out")
    assert [(r["id"], qa(r)[1], r["question_type"]) for r in recs] == [
        ("dvqa-train-1407", "3", "structure"),
        ("dvqa-train-1408", "tip", "data"),
    ]
    assert qa(recs[0])[0] == "<image>\nHow many bars are there?"
    assert {r["family"] for r in recs} == {"chart"}
    assert convert("dvqa", ["--root", root, "--limit", "1"], tmp_path / "one") == recs[:1]


def test_dvqa_errors(tmp_path, capsys):
    root = dvqa_fixture(tmp_path)
    (root / "images" / "bar_train_00000001.png").unlink()
    err = convert_error("dvqa", ["--root", root], tmp_path / "out", capsys)
    assert str(root / "images" / "bar_train_00000001.png") in err
    assert f"{root / 'qa' / 'train_qa.json'}: entry 1" in err
    recs = convert("dvqa", ["--root", root, "--allow-missing"], tmp_path / "out")
    assert [r["id"] for r in recs] == ["dvqa-train-1407"]
