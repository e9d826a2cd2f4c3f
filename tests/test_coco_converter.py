"""COCO converter on a small hand-written COCO instances file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.data.converters import CONVERTERS, get_converter, load_converters
from polyvis.data.converters.coco import (
    box_text,
    coco_to_records,
    load_coco,
    parse_box,
    plural,
    position_phrase,
)
from polyvis.data.records import read_records, record_image_paths
from polyvis.errors import DataError, RegistryError

BUS = [70, 55, 25, 20]  # centre (82.5, 65): bottom right of a 100 x 80 image
LIGHT = [45, 30, 10, 20]  # centre (50, 40): centre
PERSON_A = [5.4, 4.6, 20.2, 15.1]  # centre (15.5, 12.15): top left; box [5, 5, 26, 20]
PERSON_B = [40, 5, 8, 10]  # centre (44, 10): top


def _coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "sub/b.png", "width": 60, "height": 60},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 2, "name": "traffic light"},
            {"id": 3, "name": "bus"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": PERSON_A, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": BUS, "attributes": {"color": "red"}},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": LIGHT},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 1},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": PERSON_B},
        ],
    }


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (100, 80), "white").save(images / "a.png")
    Image.new("RGB", (60, 60), "white").save(images / "sub" / "b.png")
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(_coco()))
    return ann, images


def _convert(ann: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["data", "convert", "coco", "--annotations", str(ann), "--images", str(images),
                 "--out", str(out), "--split", "val", *extra])  # fmt: skip


def test_cli_converts_the_fixture(dataset, tmp_path):
    ann, images = dataset
    out = tmp_path / "out"
    assert _convert(ann, images, out, "--box-format", "pixels") == 0  # norm1000: test_box_format
    records = read_records(out / "val.jsonl")
    by_id = {r["id"]: r for r in records}
    for rec in records:
        (path,) = record_image_paths(rec, out)
        assert (
            path.resolve()
            == (images / ("a.png" if "-000001-" in rec["id"] else "sub/b.png")).resolve()
        )
        assert rec["family"] == "scene"
    answer = {k: r["conversations"][1]["value"] for k, r in by_id.items()}
    question = {
        k: r["conversations"][0]["value"].replace("<image>\n", "") for k, r in by_id.items()
    }
    # Crowd annotation skipped; reading order top-left to bottom-right; colour where annotated.
    assert answer["coco-val-000001-caption"] == (
        "a person at the top left, a person at the top, a traffic light in the centre, "
        "a red bus at the bottom right"
    )
    assert by_id["coco-val-000001-caption"]["metric"] == "cider"
    # Grounding only names unique objects: the red bus or the traffic light, never a person.
    grounded = re.fullmatch(r"Where is the (.+)\? Answer with a box \[x1, y1, x2, y2\]\.", question["coco-val-000001-grounding"]).group(1)  # fmt: skip
    expected = {"red bus": [70, 55, 95, 75], "traffic light": [45, 30, 55, 50]}[grounded]
    assert parse_box(answer["coco-val-000001-grounding"]) == expected
    counts = {"people": 2, "buses": 1, "traffic lights": 1}
    name = re.fullmatch(r"How many (.+)\?", question["coco-val-000001-count"]).group(1)
    assert int(answer["coco-val-000001-count"]) == counts[name]
    assert question["coco-val-000001-attribute"] == "What colour is the bus?"
    assert answer["coco-val-000001-attribute"] == "red"
    rel = re.fullmatch(r"Is the (.+) (left of|right of|above|below) the (.+)\?", question["coco-val-000001-relation"])  # fmt: skip
    centres = {"red bus": (82.5, 65), "traffic light": (50, 40)}
    a, b = centres[rel.group(1)], centres[rel.group(3)]
    truth = {
        "left of": a[0] < b[0],
        "right of": a[0] > b[0],
        "above": a[1] < b[1],
        "below": a[1] > b[1],
    }
    assert answer["coco-val-000001-relation"] == ("yes" if truth[rel.group(2)] else "no")
    # An image without objects only gets a counting question, answered 0.
    assert [k for k in by_id if "-000002-" in k] == ["coco-val-000002-count"]
    assert answer["coco-val-000002-count"] == "0"


def test_conversion_is_deterministic_and_seeded(dataset):
    coco = load_coco(dataset[0])
    one = coco_to_records(coco, "imgs", "x", seed=0)
    assert one == coco_to_records(coco, "imgs", "x", seed=0)
    many = [coco_to_records(coco, "imgs", "x", seed=s) for s in range(8)]
    assert any(m != one for m in many)  # the seed chooses which question is asked


def test_real_grounding_box_rounds_the_float_bbox():
    assert box_text(PERSON_A) == "[5, 5, 26, 20]"
    assert parse_box("[5, 5, 26, 20]") == [5, 5, 26, 20]
    assert parse_box("[5, 5, 26]") is None and parse_box("5, 5, 26, 20") is None


def test_task_subset_and_min_area(dataset, tmp_path):
    ann, images = dataset
    out = tmp_path / "out"
    assert _convert(ann, images, out, "--tasks", "grounding,count", "--min-area", "300",
                    "--box-format", "pixels") == 0  # fmt: skip
    records = read_records(out / "val.jsonl")
    assert {r["task"] for r in records} == {"grounding", "count"}
    # Only the bus (500 px^2) is at least 300 px^2, so it is the one grounded.
    (g,) = [r for r in records if r["task"] == "grounding"]
    assert g["conversations"][1]["value"] == "[70, 55, 95, 75]"
    # --limit, as every converter takes it: the first N records of the same conversion
    assert _convert(ann, images, tmp_path / "two", "--tasks", "grounding,count", "--min-area",
                    "300", "--box-format", "pixels", "--limit", "2") == 0  # fmt: skip
    assert read_records(tmp_path / "two" / "val.jsonl") == records[:2]


def test_missing_image_is_an_error_naming_the_file(dataset, tmp_path, capsys):
    ann, images = dataset
    (images / "sub" / "b.png").unlink()
    assert _convert(ann, images, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "b.png: image file not found (1 missing" in err
    assert _convert(ann, images, tmp_path / "out", "--allow-missing") == 0
    ids = [r["id"] for r in read_records(tmp_path / "out" / "val.jsonl")]
    assert ids and all("-000001-" in i for i in ids)


def test_bad_annotations_name_the_entry(tmp_path):
    coco = _coco()
    coco["annotations"][2]["category_id"] = 9
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"bad\.json: annotations\[2\] has unknown category_id 9"):
        load_coco(path)
    del coco["images"][1]["width"]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"bad\.json: images\[1\] has no 'width'"):
        load_coco(path)


def test_unknown_task_is_an_error(dataset, tmp_path, capsys):
    assert _convert(*dataset, tmp_path / "o", "--tasks", "count,colours") == 2
    assert "--tasks: unknown task 'colours'" in capsys.readouterr().err


def test_words():
    assert [plural(w) for w in ("person", "bus", "traffic light", "skis", "box", "pony", "cup")] == [
        "people", "buses", "traffic lights", "skis", "boxes", "ponies", "cups"]  # fmt: skip
    assert position_phrase(5, 5, 90, 90) == "at the top left"
    assert position_phrase(45, 45, 90, 90) == "in the centre"
    assert position_phrase(85, 45, 90, 90) == "on the right"
    assert position_phrase(45, 89, 90, 90) == "at the bottom"


def test_registry_and_cli_dispatch():
    assert "coco" in load_converters()
    assert get_converter("coco") is CONVERTERS.get("coco")
    with pytest.raises(RegistryError, match="unknown converter 'nope'; valid: .*coco"):
        get_converter("nope")
    assert main(["data", "convert"]) == 1  # no KIND: prints the list of converters
