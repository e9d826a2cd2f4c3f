"""The page families (ocrpage, tablepage): larger pages than the generator's size, small text on
them, deterministic bytes, records like every family's; the other families keep square images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyvis.data.records import read_records
from polyvis.data.synthetic import FAMILIES, LEVELS, generate, item_rng
from polyvis.eval.metrics import FAMILY_METRICS, metric_for

PAGES = ("ocrpage", "tablepage")


def render(family: str, index: int, level: str, size: int = 64):
    return FAMILIES.get(family)().render(item_rng(0, family, "x", index), size, level)


def ink_rows(img: Image.Image) -> np.ndarray:
    """Rows holding a pixel darker than the page's own colour (its corner) by more than 60."""
    arr = np.asarray(img, dtype=np.int16)
    dark = (arr[0, 0] - arr).max(axis=2) > 60
    return np.flatnonzero(dark.any(axis=1))


def test_pages_are_larger_than_the_size_and_every_other_family_stays_square():
    for size in (32, 64):
        assert FAMILIES.get("ocrpage").page_size(size) == (2 * size, 2 * size)
        assert FAMILIES.get("tablepage").page_size(size) == (3 * size, size)
        for level in LEVELS:
            assert render("ocrpage", 0, level, size).image.size == (2 * size, 2 * size)
            assert render("tablepage", 0, level, size).image.size == (3 * size, size)
    for name in FAMILIES:
        if name not in PAGES:
            assert FAMILIES.get(name).page_size(64) == (64, 64), name


def test_ocrpage_text_is_one_small_line_at_most_an_eighth_of_the_page_high():
    heights = []
    for level in ("easy", "medium"):  # no tilt, no noise: the ink is exactly the text
        for i in range(40):
            item = render("ocrpage", i, level)
            rows = ink_rows(item.image)
            x0, y0, x1, y1 = item.meta["box"]
            assert y0 <= rows[0] and rows[-1] < y1 and len(rows) >= y1 - y0 - 2, (level, i)
            assert item.meta["font_px"] <= 15  # 12-15 px, less where the line is long
            assert x1 - x0 <= 0.9 * 64  # at most one tile wide
            heights.append(y1 - y0)
            # as an untiled encoder sees it: the page shrunk to 64 px
            small = item.image.resize((64, 64), Image.BICUBIC)
            assert len(ink_rows(small)) <= 8
    assert max(heights) <= 128 // 8 and min(heights) >= 6
    for i in range(40):  # tilted and noisy: the text's box (with room for the tilt) is small too
        x0, y0, x1, y1 = render("ocrpage", i, "hard").meta["box"]
        assert y1 - y0 <= 128 // 8 + 2 * np.ceil(0.06 * (x1 - x0))


def test_tablepage_is_a_wide_table_whose_lookup_answer_is_its_cell():
    shapes = {"easy": (3, 4), "medium": (3, 5), "hard": (4, 6)}
    for level, (rows, cols) in shapes.items():
        for i in range(10):
            meta = render("tablepage", i, level).meta
            table = meta["table"]
            assert (len(table), len(table[0])) == (rows, cols)
            keys = [row[0] for row in table[1:]]
            assert len(set(keys)) == len(keys)  # unambiguous row keys
            (q,) = meta["qa"]
            header, key = q["q"].removeprefix("What is the ").removesuffix("?").split(" of ")
            assert q["a"] == table[keys.index(key) + 1][table[0].index(header)]
            assert q["task"] == "lookup" and meta["font_px"] <= 15


def test_page_families_generate_the_same_bytes_with_ids_and_metrics(tmp_path: Path):
    outs = []
    for name, workers in (("a", 1), ("b", 2)):
        generate(list(PAGES), n=10, seed=0, out=tmp_path / name, workers=workers, progress=False)
        outs.append(tmp_path / name)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) == 2 * (10 + 3) + 1
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    manifest = json.loads((outs[0] / "manifest.json").read_text())["families"]
    for fam in PAGES:
        assert FAMILY_METRICS[fam] == FAMILIES.get(fam).metric == manifest[fam]["metric"]
        for split, count in manifest[fam]["images"].items():
            records = read_records(outs[0] / fam / f"{split}.jsonl")
            task = "read" if fam == "ocrpage" else "lookup"
            assert [r["id"] for r in records] == [
                f"{fam}-{split}-{i:06d}-{task}" for i in range(count)
            ]
            for i, rec in enumerate(records):
                assert rec["family"] == fam and rec["task"] == task
                assert metric_for(rec) == FAMILY_METRICS[fam]
                image = Image.open(outs[0] / fam / rec["image"])
                assert image.size == FAMILIES.get(fam).page_size(64) and image.mode == "RGB"
                assert rec["image"] == f"images/{split}/{i:06d}.png"
    ocr = read_records(outs[0] / "ocrpage" / "train.jsonl")[0]["conversations"]
    assert ocr[0]["value"] == "<image>\nWhat does the text say?"


@pytest.mark.parametrize("family", PAGES)
def test_a_page_family_renders_the_same_item_from_the_same_seed(family: str):
    for level in LEVELS:
        a, b = render(family, 3, level), render(family, 3, level)
        assert a.meta == b.meta and a.image.tobytes() == b.image.tobytes()
        assert render(family, 4, level).image.tobytes() != a.image.tobytes()
