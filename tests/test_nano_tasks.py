"""The nano world's training and test selections: scored questions only, balanced, unique ids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from polyvis.data.records import read_records
from polyvis.data.synthetic import generate
from polyvis.nano.tasks import SCORED_TASKS, select_split


def test_select_split_keeps_scored_tasks_balances_families_and_keeps_ids_unique(tmp_path: Path):
    families = ["scene", "ocr", "table"]
    generate(families, 10, 0, tmp_path, image_size=32, progress=False)
    paths = select_split(tmp_path, families, "train", per_family=20, seed=1)
    for fam, path in zip(families, paths):
        records = read_records(path)  # validates: ids unique, images present
        assert len(records) == 20
        assert {r["task"] for r in records} <= set(SCORED_TASKS[fam])
        originals = {r["id"] for r in read_records(tmp_path / fam / "train.jsonl")}
        # ocr has 8 scored train records: each appears 2 or 3 times under distinct ids
        base = Counter(r["id"].split("~")[0] for r in records)
        assert set(base) <= originals and max(base.values()) - min(base.values()) <= 1
    assert paths[0].parent == tmp_path / "scene"  # image paths stay relative to the family folder
    # Same seed, same selection; no per_family keeps every scored record in order.
    again = select_split(tmp_path, families, "train", per_family=20, seed=1)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    test = read_records(select_split(tmp_path, ["scene"], "test")[0])
    full = read_records(tmp_path / "scene" / "test.jsonl")
    assert [r["id"] for r in test] == [r["id"] for r in full if r["task"] in SCORED_TASKS["scene"]]


def test_per_image_selection_puts_every_scored_question_of_an_image_in_one_conversation(
    tmp_path: Path,
):
    generate(["scene", "ocr"], 10, 0, tmp_path, image_size=32, progress=False)
    scene, ocr = select_split(tmp_path, ["scene", "ocr"], "train", seed=0, per_image=True)
    singles = [
        r
        for r in read_records(tmp_path / "scene" / "train.jsonl")
        if r["task"] in SCORED_TASKS["scene"]
    ]
    grouped = read_records(scene)  # validates: one <image> marker for the one image, ids unique
    assert len(grouped) == len({r["image"] for r in singles})
    asked = {(r["image"], r["conversations"][0]["value"].replace("<image>\n", "")) for r in singles}
    pairs = set()
    for rec in grouped:
        turns = rec["conversations"]
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert sorted(rec["task"].split("+")) == sorted(
            r["task"] for r in singles if r["image"] == rec["image"]
        )
        pairs |= {(rec["image"], t["value"].replace("<image>\n", "")) for t in turns[::2]}
    assert pairs == asked  # every question kept, none invented
    # One question per image (ocr) stays a plain two-turn record under its own id.
    assert all(len(r["conversations"]) == 2 and "+" not in r["id"] for r in read_records(ocr))
