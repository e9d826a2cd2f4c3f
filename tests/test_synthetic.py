"""Synthetic families: determinism, valid records, answers that match the ground truth, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.data.converters.coco import parse_box
from polyvis.data.records import read_records, record_image_paths
from polyvis.data.synthetic import FAMILIES, generate, item_rng, split_sizes
from polyvis.data.synthetic.common import COLORS
from polyvis.data.synthetic.latex import render_mask
from polyvis.data.synthetic.scene import SHAPES
from polyvis.data.synthetic.table import to_markdown
from polyvis.errors import ConfigError

ALL = ["scene", "ocr", "latex", "chart", "table", "mixed"]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _answer(rec: dict) -> str:
    return rec["conversations"][1]["value"]


def _question(rec: dict) -> str:
    return rec["conversations"][0]["value"].replace("<image>\n", "")


def test_registry_holds_the_six_families():
    assert FAMILIES.names() == sorted(ALL)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(ALL, 5, 3, tmp_path / "a", image_size=32, progress=False)
    generate(ALL, 5, 3, tmp_path / "b", image_size=32, progress=False)
    generate(ALL, 5, 4, tmp_path / "c", image_size=32, progress=False)
    ta, tb, tc = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert ta == tb
    assert len(ta) > 6 * 5  # every image, jsonl, COCO file and the manifest were compared
    for fam in ALL:
        assert ta[f"{fam}/train.jsonl"] != tc[f"{fam}/train.jsonl"], fam
        assert ta[f"{fam}/images/train/000000.png"] != tc[f"{fam}/images/train/000000.png"], fam
    assert a["scene"]["images"] == {"train": 4, "val": 1, "test": 0}


def test_worker_count_does_not_change_the_output(tmp_path):
    generate(["ocr", "scene"], 6, 1, tmp_path / "one", image_size=32, progress=False)
    generate(["ocr", "scene"], 6, 1, tmp_path / "two", image_size=32, workers=2, progress=False)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


def test_regenerating_removes_stale_images(tmp_path):
    generate(["ocr"], 10, 0, tmp_path, image_size=32, progress=False)
    generate(["ocr"], 5, 0, tmp_path, image_size=32, progress=False)
    assert len(list((tmp_path / "ocr" / "images" / "train").glob("*.png"))) == 4


@pytest.mark.parametrize("family", ALL)
def test_family_writes_valid_records_with_images_of_the_requested_size(tmp_path, family):
    counts = generate([family], 6, 7, tmp_path, image_size=40, difficulty="hard", progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["families"][family]["images"] == counts[family]["images"]
    for split, n_images in counts[family]["images"].items():
        path = tmp_path / family / f"{split}.jsonl"
        records = read_records(path)  # validates every record
        assert len(records) == counts[family]["records"][split]
        used = set()
        for rec in records:
            assert rec["family"] == family and rec["id"].startswith(f"{family}-{split}-")
            assert _answer(rec).strip()
            (img_path,) = record_image_paths(rec, path.parent)
            with Image.open(img_path) as im:
                assert im.size == (40, 40) and im.mode == "RGB"
            used.add(img_path.name)
        assert len(used) == n_images


@pytest.mark.parametrize("family", ALL)
def test_family_renders_at_224_px(family):
    item = FAMILIES.get(family)().render(item_rng(0, family, "x", 0), 224, "medium")
    assert item.image.size == (224, 224)
    assert np.asarray(item.image).std() > 5  # something was drawn
    json.dumps(item.meta)  # ground truth must be JSON-able (it crosses process boundaries)


def test_split_sizes_sum_to_n():
    assert split_sizes(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == {
        "train": 8,
        "val": 1,
        "test": 1,
    }
    for n in range(1, 40):
        assert sum(split_sizes(n, {"train": 0.7, "val": 0.2, "test": 0.1}).values()) == n


def test_bad_options_name_their_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^families: unknown family 'nope'; valid: chart"):
        generate(["nope"], 2, 0, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="^splits:"):
        generate(["ocr"], 2, 0, tmp_path, splits=(0.5, 0.1, 0.1), progress=False)
    with pytest.raises(ConfigError, match="^difficulty: 'extreme'"):
        generate(["ocr"], 2, 0, tmp_path, difficulty="extreme", progress=False)
    with pytest.raises(ConfigError, match="^image_size:"):
        generate(["ocr"], 2, 0, tmp_path, image_size=8, progress=False)


def _scene_set(tmp_path: Path, difficulty: str, n: int = 16):
    generate(
        ["scene"],
        n,
        5,
        tmp_path,
        image_size=64,
        difficulty=difficulty,
        splits=(1, 0, 0),
        progress=False,
    )
    coco = json.loads((tmp_path / "scene" / "annotations" / "train.json").read_text())
    records = read_records(tmp_path / "scene" / "train.jsonl")
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(
            (cats[a["category_id"]], a["attributes"]["color"], a["bbox"])
        )
    return records, anns


def test_scene_answers_match_the_coco_annotations(tmp_path):
    records, anns = _scene_set(tmp_path, "hard")
    tasks = {rec["task"] for rec in records}
    assert tasks == {"caption", "relation", "grounding", "count", "attribute"}
    for rec in records:
        objs = anns[int(rec["id"].split("-")[2])]
        q, a = _question(rec), _answer(rec)
        if rec["task"] == "count":
            plural = re.fullmatch(r"How many (\w+)\?", q).group(1)
            shape = {s + "s": s for s in SHAPES}[plural]
            assert int(a) == sum(o[0] == shape for o in objs)
        elif rec["task"] == "grounding":
            color, shape = re.fullmatch(r"Where is the (\w+) (\w+)\? .*", q).groups()
            (bbox,) = [o[2] for o in objs if o[:2] == (shape, color)]  # unique by construction
            x, y, w, h = bbox
            assert parse_box(a) == [x, y, x + w, y + h] and rec["metric"] == "box_accuracy"
        elif rec["task"] == "attribute":
            shape = re.fullmatch(r"What colour is the (\w+)\?", q).group(1)
            (only,) = [o for o in objs if o[0] == shape]
            assert a == only[1]
        elif rec["task"] == "relation":
            c1, s1, rel, c2, s2 = re.fullmatch(
                r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", q
            ).groups()
            (b1,) = [o[2] for o in objs if o[:2] == (s1, c1)]
            (b2,) = [o[2] for o in objs if o[:2] == (s2, c2)]
            axis = 0 if rel in ("left of", "right of") else 1
            d = (b1[axis] + b1[axis + 2] / 2) - (b2[axis] + b2[axis + 2] / 2)
            assert a == ("yes" if (d < 0) == (rel in ("left of", "above")) else "no")
        else:
            assert rec["metric"] == "cider"
            assert len(a.split(", ")) == len(objs)
            assert sorted(re.findall(r"an? (\w+ \w+) (?:at|on|in) ", a)) == sorted(
                f"{c} {s}" for s, c, _ in objs
            )


def test_scene_boxes_are_the_exact_extent_of_the_drawn_shapes(tmp_path):
    _, anns = _scene_set(tmp_path, "easy", n=8)
    for image_id, objs in anns.items():
        img = np.asarray(
            Image.open(tmp_path / "scene" / "images" / "train" / f"{image_id:06d}.png")
        )
        covered = np.zeros(img.shape[:2], bool)
        for _, color, (x, y, w, h) in objs:
            region = (img[y : y + h, x : x + w] == COLORS[color]).all(-1)
            ys, xs = np.nonzero(region)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, w, h)
            covered[y : y + h, x : x + w] = True
        assert (img[~covered] == 255).all()  # easy scenes: nothing outside the boxes


def test_chart_table_mixed_ocr_latex_answers_follow_the_ground_truth():
    for i in range(6):
        rng = lambda fam, i=i: item_rng(11, fam, "t", i)  # noqa: E731
        chart = FAMILIES.get("chart")().render(rng("chart"), 48, "hard").meta
        labels, values = chart["labels"], chart["values"]
        qa = {e["task"]: e for e in chart["qa"]}
        label = re.fullmatch(r"What is the value of (\w+)\?", qa["lookup"]["q"]).group(1)
        assert qa["lookup"]["a"] == str(values[labels.index(label)])
        pick = max if "largest" in qa["extreme"]["q"] else min
        assert qa["extreme"]["a"] == labels[values.index(pick(values))]
        x, y = re.fullmatch(r"Which is larger, (\w+) or (\w+)\?", qa["compare"]["q"]).groups()
        assert qa["compare"]["a"] == max((x, y), key=lambda k: values[labels.index(k)])
        assert qa["to_table"]["a"].splitlines() == [f"{k} | {v}" for k, v in zip(labels, values)]

        table = FAMILIES.get("table")().render(rng("table"), 48, "medium").meta
        grid, (lookup, md) = table["table"], table["qa"]
        col, key = re.fullmatch(r"What is the (\w+) of (\w+)\?", lookup["q"]).groups()
        row = next(r for r in grid[1:] if r[0] == key)
        assert lookup["a"] == row[grid[0].index(col)]
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in md["a"].splitlines()]
        assert [cells[0], *cells[2:]] == grid and md["a"] == to_markdown(grid)

        signs = FAMILIES.get("mixed")().render(rng("mixed"), 48, "hard").meta
        words = {s["color"]: s["word"] for s in signs["signs"]}
        read, colour, transcribe = signs["qa"]
        # every word once, top to bottom by the sign's centre, then left to right
        order = sorted(signs["signs"], key=lambda s: (s["box"][1] + s["box"][3], s["box"][0]))
        assert transcribe["a"].split() == [s["word"] for s in order]
        assert transcribe["metric"] == "edit_similarity"
        assert (
            read["a"] == words[re.fullmatch(r"What does the (\w+) sign say\?", read["q"]).group(1)]
        )
        said = re.fullmatch(r"What colour is the sign that says (\w+)\?", colour["q"]).group(1)
        assert words[colour["a"]] == said
        assert len(set(words.values())) == len(words)  # answers are unambiguous
        # easy: one sign; "describe" needs its colour and its word at once
        easy = FAMILIES.get("mixed")().render(rng("mixed-easy"), 64, "easy").meta
        (sign,) = easy["signs"]
        assert [(q["q"], q["a"]) for q in easy["qa"]] == [
            ("What does the sign say?", sign["word"]),
            ("What colour is the sign?", sign["color"]),
            ("What does the sign say, and what colour is it?", f"{sign['word']} {sign['color']}"),
            ("Read the signs.", sign["word"]),
        ]
        # medium: two stacked signs named by place
        medium = FAMILIES.get("mixed")().render(rng("mixed-medium"), 64, "medium").meta
        top, bottom = sorted(medium["signs"], key=lambda s: s["box"][1])
        assert top["box"][3] <= bottom["box"][1]  # one above the other
        place = {"top": top, "bottom": bottom}

        def named(pattern: str, q: str, place: dict = place) -> dict:
            return place[re.match(pattern, q)[1]]

        read, colour, describe, _ = medium["qa"]
        assert read["a"] == named(r"What does the (\w+) sign say\?$", read["q"])["word"]
        assert colour["a"] == named(r"What colour is the (\w+) sign\?$", colour["q"])["color"]
        sign = named(r"What does the (\w+) sign say, and what colour is it\?$", describe["q"])
        assert describe["a"] == f"{sign['word']} {sign['color']}" and describe["task"] == "describe"

        ocr = FAMILIES.get("ocr")().render(rng("ocr"), 48, "hard").meta
        assert ocr["qa"][0]["a"] == ocr["text"]
        latex = FAMILIES.get("latex")().render(rng("latex"), 48, "hard").meta
        assert latex["qa"][0]["a"] == latex["latex"] and "$" not in latex["latex"]
        assert render_mask(latex["latex"]).max() > 0  # mathtext parses the answer


def test_record_metrics_are_registered_metrics(tmp_path):
    from polyvis.eval.metrics import METRICS

    generate(ALL, 3, 0, tmp_path, image_size=32, progress=False)
    for fam in ALL:
        assert FAMILIES.get(fam).metric in METRICS
        for rec in read_records(tmp_path / fam / "train.jsonl"):
            assert rec.get("metric", FAMILIES.get(fam).metric) in METRICS


def test_cli_synth_inspect_preview(tmp_path, capsys):
    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "synth",
                "--families",
                "scene,ocr,chart",
                "--n",
                "4",
                "--seed",
                "2",
                "--out",
                str(out),
                "--size",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["data", "inspect", str(out)]) == 0
    assert "0 bad" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert main(["data", "preview", str(out), "--out", str(sheet), "--n", "5"]) == 0
    with Image.open(sheet) as im:
        assert im.width > 2 * 160 and im.height > 160
    # Break one record and remove one image: inspect fails and names both records.
    path = out / "ocr" / "train.jsonl"
    lines = path.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["conversations"] = bad["conversations"][:1]
    lines[0] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    (out / "ocr" / "images" / "train" / "000001.png").unlink()
    assert main(["data", "inspect", str(out), "--max-errors", "5"]) == 1
    text = capsys.readouterr().out
    assert "ocr-train-000000-read" in text and "ends with a human turn" in text
    assert "ocr-train-000001-read" in text and "image not found" in text


def test_synthetic_cache_key_covers_the_options_and_the_generator_version(monkeypatch, tmp_path):
    from polyvis.data.synthetic import cache as data

    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path))
    key = data.synthetic_dir({"families": ["ocr"], "n": 4})
    assert key.parent == tmp_path / "data"
    assert data.synthetic_dir({"n": 4, "families": ["ocr"]}) == key  # order-free
    assert data.synthetic_dir({"families": ["ocr"], "n": 5}) != key
    # A generator that writes something new for the same options never reuses an old set.
    monkeypatch.setattr(data, "SYNTH_VERSION", data.SYNTH_VERSION + 1)
    assert data.synthetic_dir({"families": ["ocr"], "n": 4}) != key
