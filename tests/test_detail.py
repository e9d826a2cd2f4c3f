"""The detail family: patterns and orientations drawn as annotated, questions that follow them,
captions that never name them, and the probes that read them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polyvis.data.records import read_records
from polyvis.data.synthetic import generate
from polyvis.data.synthetic.detail import (
    ORIENTATIONS,
    PATTERNS,
    STRIPE_PERIOD,
    detail_questions,
    shape_mask,
)
from polyvis.nano.probe_data import find_probe_sets


def _mask(shape: str, pattern: str, orientation: str | None = None) -> np.ndarray:
    obj = {"shape": shape, "pattern": pattern, "bbox": [4, 6, 20, 20]}
    if orientation:
        obj["orientation"] = orientation
    return np.asarray(shape_mask(obj, 32)) > 0


def test_patterns_fill_stripe_or_outline_the_shape():
    solid, striped, hollow = (_mask("square", p, "straight") for p in PATTERNS)
    assert solid[6:26, 4:24].all() and solid.sum() == 400  # exactly the box
    rows = striped[6:26, 4:24].all(1)
    assert rows.tolist() == [(r % STRIPE_PERIOD) < STRIPE_PERIOD // 2 for r in range(20)]
    assert not striped[:, :4].any() and not striped[26:].any()
    assert hollow[6, 4:24].all() and hollow[7, 4:24].all() and not hollow[8:24, 6:22].any()
    assert (hollow <= solid).all() and (striped <= solid).all()


@pytest.mark.parametrize("way", ORIENTATIONS["triangle"])
def test_a_triangle_points_where_its_orientation_says(way):
    m = _mask("triangle", "solid", way)[6:26, 4:24]
    # the side the apex points to holds the fewest pixels
    sides = {"up": m[:5].sum(), "down": m[-5:].sum(), "left": m[:, :5].sum(),
             "right": m[:, -5:].sum()}  # fmt: skip
    assert min(sides, key=sides.get) == way


def test_a_diagonal_square_stands_on_its_corner():
    straight, diagonal = _mask("square", "solid", "straight"), _mask("square", "solid", "diagonal")
    assert straight[6, 4] and not diagonal[6, 4]  # the box's corner is empty
    assert diagonal[6, 13:15].any() and diagonal[15:17, 4].any()  # corners sit mid-side


def test_records_answer_from_the_annotations_and_captions_never_name_the_detail(tmp_path):
    generate(["detail"], 24, 0, tmp_path, image_size=64, progress=False)
    folder = tmp_path / "detail"
    coco = json.loads((folder / "annotations/train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects: dict[int, list] = {}
    for ann in coco["annotations"]:
        objects.setdefault(ann["image_id"], []).append(
            {"shape": names[ann["category_id"]], **ann["attributes"]}
        )
    records = read_records(folder / "train.jsonl")
    tasks = {r["task"] for r in records}
    assert tasks == {"caption", "pattern", "orientation"}
    # captions name positions with left / right, so orientation shows as the square's words
    words = {*PATTERNS, *ORIENTATIONS["square"], "points", "pointing"}
    for rec in records:
        index = int(rec["id"].split("-")[2])
        answer = rec["conversations"][1]["value"]
        if rec["task"] == "caption":
            assert not words & set(answer.replace(",", " ").replace(".", " ").split()), answer
        else:
            expected = {t: a for t, _, a in detail_questions(objects[index])}
            assert answer == expected[rec["task"]]


def test_probes_read_pattern_and_orientation_of_the_detail_family(tmp_path):
    generate(["detail"], 40, 0, tmp_path, image_size=32, progress=False)
    (probe_set,) = find_probe_sets([tmp_path])
    assert probe_set.family == "detail"
    names = {t.name.split(":")[0] for t in probe_set.tasks}
    assert {"pattern (detail)", "orientation (detail)", "colour (detail)"} <= names
    assert "pattern of the X object (detail)" in names
    pattern = next(t for t in probe_set.tasks if t.name == "pattern (detail)")
    assert set(pattern.train_labels) <= set(PATTERNS)


def test_dino_nano_trains_on_detail_images(tmp_path):
    from polyvis.nano.dino import QUICK_SETTINGS, train_dino

    generate(["detail"], 12, 0, tmp_path / "d", image_size=32, progress=False)
    settings = {**QUICK_SETTINGS, "families": ["detail"]}
    train_dino([tmp_path / "d"], tmp_path / "e", settings, progress=False)
    assert (tmp_path / "e" / "model.safetensors").is_file()


def test_the_nano_world_scores_detail_on_its_pattern_and_orientation_questions(tmp_path):
    from polyvis.nano.tasks import select_split

    generate(["detail"], 30, 0, tmp_path, image_size=32, progress=False)
    (path,) = select_split(tmp_path, ["detail"], "train")
    tasks = [r["task"] for r in read_records(path)]
    assert set(tasks) == {"pattern", "orientation"}  # no caption: it is a long transcription
