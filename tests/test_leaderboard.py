"""The leaderboard report: OUT.json round-trips with the issue's schema, OUT.md and OUT.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyvis.errors import DataError
from polyvis.eval.leaderboard import write_leaderboard
from polyvis.eval.stats import CellScores, leaderboard

META = {
    "command": "polyvis ablate configs/leaderboard-nano.yaml --out runs/leaderboard",
    "date": "2026-12-07",
    "machine": "2-core CPU",
    "wall_seconds": 5400.5,
}
CELL_META = {
    "dino": {"encoders": ["dino"], "fusion": None, "adapter": "mlp", "train_seconds": 100.0},
    "clip": {"encoders": ["clip"], "fusion": None, "adapter": "mlp", "train_seconds": 90.0},
    "clip+dino omnifusion": {
        "encoders": ["clip", "dino"],
        "fusion": "omnifusion",
        "adapter": "mlp",
        "train_seconds": 150.0,
        "flops_per_step": 1.5e12,
    },
}
SCHEMA_TOP = {"command", "date", "machine", "wall_seconds", "cells", "comparisons"}
SCHEMA_CELL = {"name", "encoders", "fusion", "adapter", "seeds", "seed_means", "families", "mean"}
SCHEMA_CELL |= {"train_seconds"}
SCHEMA_COMPARISON = {"cell", "vs", "diff", "ci", "p_holm"}


def _stats() -> dict:
    rng = np.random.default_rng(0)
    items = {f: [f"{f}{i}" for i in range(50)] for f in ("scene", "ocr")}
    cells = []
    for k, (name, meta) in enumerate(CELL_META.items()):
        fams = {f: (rng.random((3, 50)) < 0.3 + 0.2 * k) * 100.0 for f in items}
        cells.append(CellScores(name, [0, 1, 2], fams, items, meta))
    return leaderboard(cells, baselines=["dino", "clip"], n_boot=200)


def test_write_leaderboard_json_round_trips_with_every_schema_key(tmp_path: Path) -> None:
    doc = write_leaderboard(_stats(), tmp_path / "board", META)
    loaded = json.loads((tmp_path / "board.json").read_text())
    assert loaded == doc
    assert set(loaded) >= SCHEMA_TOP
    assert {k: loaded[k] for k in META} == META
    assert list(loaded)[:4] == list(META)  # meta at the top
    for cell in loaded["cells"]:
        assert set(cell) >= SCHEMA_CELL, cell["name"]
        assert {k: cell[k] for k in CELL_META[cell["name"]]} == CELL_META[cell["name"]]
        assert len(cell["seed_means"]) == len(cell["seeds"]) == 3
        for entry in [cell["mean"], *cell["families"].values()]:
            assert set(entry) == {"mean", "ci"}
            lo, hi = entry["ci"]
            assert 0 <= lo <= entry["mean"] <= hi <= 100
    (comp,) = loaded["comparisons"]
    assert set(comp) >= SCHEMA_COMPARISON
    assert (comp["cell"], comp["vs"]) == ("clip+dino omnifusion", "clip")


def test_single_expert_fusion_is_null_in_json(tmp_path: Path) -> None:
    write_leaderboard(_stats(), tmp_path / "board", META)
    text = (tmp_path / "board.json").read_text()
    cells = {c["name"]: c for c in json.loads(text)["cells"]}
    assert cells["dino"]["fusion"] is None and '"fusion": null' in text


def test_markdown_states_the_command_and_every_cell(tmp_path: Path) -> None:
    doc = write_leaderboard(_stats(), tmp_path / "board", META)
    md = (tmp_path / "board.md").read_text()
    assert META["command"] in md and META["date"] in md and META["machine"] in md
    assert "1 h 30 min" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for cell in doc["cells"]:
        lo, hi = cell["mean"]["ci"]
        assert any(
            f"| {cell['name']} |" in r and f"{cell['mean']['mean']:.1f} [{lo:.1f}, {hi:.1f}]" in r
            for r in rows
        ), cell["name"]
    # the main table is sorted by mean, best first
    order = [c["name"] for c in sorted(doc["cells"], key=lambda c: -c["mean"]["mean"])]
    positions = [md.index(f"| {name} |") for name in order]
    assert positions == sorted(positions)
    assert "How to read this" in md and "Holm" in md


def test_png_is_written(tmp_path: Path) -> None:
    write_leaderboard(_stats(), tmp_path / "board", META)
    with Image.open(tmp_path / "board.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_missing_meta_is_named(tmp_path: Path) -> None:
    meta = {k: v for k, v in META.items() if k != "machine"}
    with pytest.raises(DataError, match="leaderboard meta: missing 'machine'"):
        write_leaderboard(_stats(), tmp_path / "board", meta)
    assert not list(tmp_path.iterdir())


def test_markdown_has_the_two_expert_question_types_beside_their_family(tmp_path: Path) -> None:
    stats = _stats()
    ci = {"mean": 50.0, "ci": [40.0, 60.0]}
    stats["question_types"] = {
        "groups": ["scene/count", "mixed/read", "mixed/describe"],
        "two_expert": ["mixed/describe"],
        "cells": {name: {g: ci for g in ("scene/count", "mixed/read", "mixed/describe")}
                  for name in CELL_META},
    }  # fmt: skip
    write_leaderboard(stats, tmp_path / "board", META)
    md = (tmp_path / "board.md").read_text()
    section = md[md.index("## Questions that need two experts") :]
    assert "| cell | mixed/read | **mixed/describe** (two experts) |" in section
    assert "scene/count" not in section  # scene has no two-expert type
    for name in CELL_META:
        assert f"| {name} | 50.0 [40.0, 60.0] | 50.0 [40.0, 60.0] |" in section
    plain = write_leaderboard(_stats(), tmp_path / "plain", META)
    assert "question_types" not in plain
    assert "need two experts" not in (tmp_path / "plain.md").read_text()


def test_a_cell_named_with_its_adapter_stays_one_markdown_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    items = {"scene": [f"s{i}" for i in range(20)]}
    names = ["clip", "clip+dino add | ldp"]
    cells = [
        CellScores(n, [0], {"scene": (rng.random((1, 20)) < 0.5) * 100.0}, items,
                   {"encoders": ["clip"], "fusion": None, "adapter": "mlp", "train_seconds": 1.0})
        for n in names
    ]  # fmt: skip
    write_leaderboard(leaderboard(cells, ["clip"], n_boot=50), tmp_path / "b", META)
    md = (tmp_path / "b.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "ldp" in line]
    assert table and all("clip+dino add \\| ldp" in line for line in table)
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    row = next(r for r in table if r.split(" | ")[0] in ("| 1", "| 2"))  # the main table's
    # a pipe that is not escaped would split the row into more columns than the header has
    assert len(row.replace("\\|", "").split("|")) == len(header.split("|"))
