"""The two-expert families (binding, chartbind): deterministic, valid, every question type asked,
answers that follow from the drawn image, a balanced selection, listed by `polyvis list`."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.data.records import check_records, read_records
from polyvis.data.synthetic import FAMILIES, generate, item_rng
from polyvis.data.synthetic.binding import CANDIDATES, TASKS
from polyvis.data.synthetic.chartbind import TOLERANCE, VALUES
from polyvis.data.synthetic.common import COLORS, fit_font
from polyvis.eval.metrics import metric_for
from polyvis.eval.text import relaxed_accuracy_item
from polyvis.nano.tasks import SCORED_TASKS, select_split

FAMS = ["binding", "chartbind"]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _qa(rec: dict) -> tuple[str, str]:
    return rec["conversations"][0]["value"].replace("<image>\n", ""), rec["conversations"][1][
        "value"
    ]


class _Colour:
    """A pixel that equals a colour up to the hard level's noise (sigma 5; 25 is 5 sigma)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb.astype(int)

    def __eq__(self, other: object) -> bool:
        return bool(np.abs(self.rgb - np.asarray(other)).max() <= 25)


def _pixel(img: np.ndarray, x: float, y: float) -> _Colour:
    return _Colour(img[int(y), int(x)])


def _answer_from_scene(task: str, meta: dict, question: str, img: np.ndarray) -> str:
    """The answer, worked out again from the drawn objects (and checked against the pixels)."""
    if task == "position_colour":
        side, anchor = re.fullmatch(
            r"What colour is the shape just (left|right) of the (\w+)\?", question
        ).groups()
        objs = sorted(meta["objects"], key=lambda o: o["bbox"][0])
        for a, b in zip(objs, objs[1:]):  # one row: x ranges never overlap
            assert a["bbox"][0] + a["bbox"][2] <= b["bbox"][0]
        assert len({o["color"] for o in objs}) == len(objs)
        (at,) = [i for i, o in enumerate(objs) if o["shape"] == anchor]  # the only one of its kind
        for o in objs:
            x, y, w, h = o["bbox"]
            assert _pixel(img, x + w / 2, y + h / 2) == COLORS[o["color"]]
        return objs[at - 1 if side == "left" else at + 1]["color"]
    if task == "colour_text":
        colour = re.fullmatch(r"What does the (\w+) sign say\?", question).group(1)
        signs = meta["signs"]
        assert len({s["color"] for s in signs}) == len({s["word"] for s in signs}) == len(signs)
        for s in signs:
            x0, y0, x1, y1 = s["box"]
            assert _pixel(img, x0 + 1, (y0 + y1) // 2) == COLORS[s["color"]]
        (sign,) = [s for s in signs if s["color"] == colour]
        return sign["word"]
    if task == "position_text":
        side, anchor = re.fullmatch(
            r"What does the sign (left|right) of the (\w+) say\?", question
        ).groups()
        rows = meta["rows"]
        assert len({r["word"] for r in rows}) == len(rows)
        for r in rows:
            x0, y0, x1, y1 = r["box"]
            sx, sy, sw, sh = r["bbox"]
            assert (x1 <= sx) if side == "left" else (sx + sw <= x0)  # same order in every row
            assert y0 < sy + sh and sy < y1  # the shape stands beside its sign
            assert _pixel(img, sx + sw / 2, sy + sh / 2) == COLORS[r["shape_color"]]
        (row,) = [r for r in rows if r["shape"] == anchor]
        return row["word"]
    colour = re.fullmatch(r"What is the value of the (\w+) bar\?", question).group(1)
    bars = meta["bars"]
    values = [b["value"] for b in bars]
    heights = [b["box"][3] - b["box"][1] for b in bars]
    assert heights[values.index(max(values))] == max(heights)  # heights follow the values
    for b in bars:
        x0, y0, x1, y1 = b["box"]
        assert _pixel(img, (x0 + x1) / 2, y1 - 1) == COLORS[b["color"]]
    (bar,) = [b for b in bars if b["color"] == colour]
    return str(bar["value"])


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_records_validate_ask_every_type_and_follow_from_the_regenerated_scene(tmp_path, level):
    seed = 5
    counts = generate(FAMS, 30, seed, tmp_path, difficulty=level, splits=(1, 0, 0), progress=False)
    k = CANDIDATES[level]
    for fam in FAMS:
        records = read_records(tmp_path / fam / "train.jsonl")
        check_records(records, fam)
        assert len(records) == counts[fam]["images"]["train"] == 30  # one question per image
        assert set(Counter(r["task"] for r in records)) == set(SCORED_TASKS[fam])
        for index, rec in enumerate(records):
            assert rec["id"] == f"{fam}-train-{index:06d}-{rec['task']}"
            assert metric_for(rec) == FAMILIES.get(fam).metric
            item = FAMILIES.get(fam)().render(item_rng(seed, fam, "train", index), 64, level)
            with Image.open(tmp_path / fam / "images" / "train" / f"{index:06d}.png") as im:
                written = np.asarray(im)
            assert np.array_equal(written, np.asarray(item.image))  # the scene regenerates
            question, answer = _qa(rec)
            assert [(question, answer)] == [(e["q"], e["a"]) for e in item.meta["qa"]]
            assert item.meta["task"] == rec["task"]
            pixels = np.asarray(item.image)
            assert _answer_from_scene(rec["task"], item.meta, question, pixels) == answer
            found = item.meta.get("signs") or item.meta.get("rows") or item.meta.get("bars")
            n = len(item.meta.get("objects") or found)
            assert n == (k + 1 if rec["task"] == "position_colour" else k)


def test_same_arguments_same_bytes_and_workers_do_not_matter(tmp_path):
    generate(FAMS, 9, 2, tmp_path / "a", difficulty="medium", progress=False)
    generate(FAMS, 9, 2, tmp_path / "b", difficulty="medium", progress=False, workers=2)
    a = _tree(tmp_path / "a")
    assert a == _tree(tmp_path / "b")
    assert len([p for p in a if p.endswith(".png")]) == 18


def test_chart_values_are_apart_beyond_the_relaxed_tolerance_so_one_bar_answers():
    for i in range(60):
        meta = FAMILIES.get("chartbind")().render(item_rng(0, "chartbind", "x", i), 64, "hard").meta
        values = [b["value"] for b in meta["bars"]]
        assert all(VALUES[0] <= v <= VALUES[1] for v in values)
        answer = meta["qa"][0]["a"]
        assert meta["qa"][0]["metric"] == "relaxed_accuracy"
        # exactly one bar's value scores under relaxed accuracy
        assert [relaxed_accuracy_item(str(v), [answer]) for v in values].count(1.0) == 1
        assert all(abs(a - b) > TOLERANCE * max(a, b) for a in values for b in values if a != b)


def test_easy_words_and_values_are_written_as_large_as_the_mixed_familys_easy_sign():
    def font_px(box: list[int], word: str) -> int:
        x0, y0, x1, y1 = box
        return fit_font(word, (x1 - x0) * 0.85, (y1 - y0) * 0.7, round((y1 - y0) * 0.7)).size

    mixed, binding = [], {t: [] for t in ("colour_text", "position_text")}
    for i in range(60):
        sign = FAMILIES.get("mixed")().render(item_rng(0, "mixed", "x", i), 64, "easy").meta
        mixed += [font_px(s["box"], s["word"]) for s in sign["signs"]]
        meta = FAMILIES.get("binding")().render(item_rng(0, "binding", "x", i), 64, "easy").meta
        if meta["task"] in binding:
            boxes = meta.get("signs") or meta["rows"]
            binding[meta["task"]] += [font_px(s["box"], s["word"]) for s in boxes]
    assert np.median(binding["colour_text"]) >= np.median(mixed) - 1
    assert np.median(binding["position_text"]) >= np.median(mixed) - 3
    assert min(min(v) for v in binding.values()) >= 12


def test_selection_balances_question_types(tmp_path):
    generate(["binding", "chartbind"], 60, 0, tmp_path, splits=(0.5, 0, 0.5), progress=False)
    train, _ = select_split(tmp_path, ["binding", "chartbind"], "train", per_family=31, seed=3)
    chosen = read_records(train)
    counts = Counter(r["task"] for r in chosen)
    assert sorted(counts.values()) == [10, 10, 11] and set(counts) == set(TASKS)
    assert len({r["id"] for r in chosen}) == 31
    test, chart = select_split(tmp_path, ["binding", "chartbind"], "test")
    full = read_records(tmp_path / "binding" / "test.jsonl")
    kept = read_records(test)
    m = min(Counter(r["task"] for r in full).values())
    assert Counter(r["task"] for r in kept) == {t: m for t in TASKS}
    # The first m of each type, in file order.
    assert [r["id"] for r in kept] == [
        r["id"]
        for r in full
        if [x["id"] for x in full if x["task"] == r["task"]].index(r["id"]) < m
    ]
    assert read_records(chart) == read_records(tmp_path / "chartbind" / "test.jsonl")


def test_polyvis_list_shows_the_families(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "family: binding" in out and "family: chartbind" in out
