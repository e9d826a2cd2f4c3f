"""Scanning records folders (polyvis.data.scan), preview tiles and contact sheets
(polyvis.data.tiles, polyvis.data.preview), as library calls and through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.data.preview import contact_sheet, pick_round_robin, preview_sheet, write_preview
from polyvis.data.records import make_record, write_records
from polyvis.data.scan import records_files, scan_records, split_stats
from polyvis.data.tiles import record_tile
from polyvis.errors import DataError


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name, colour in (("a.png", "white"), ("b.png", "red"), ("c.png", "blue")):
        (root / "shapes" / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(root / "shapes" / "images" / name)
    write_records(
        root / "shapes" / "train.jsonl",
        [
            make_record("s-0", "images/a.png", [("Where?", "[2, 2, 20, 20]")], "scene"),
            make_record("s-1", "images/b.png", [("Colour?", "red")], "scene"),
            make_record("s-1", "images/c.png", [("Again?", "x")], "scene"),
            make_record("s-3", "images/gone.png", [("Missing?", "y")], "scene"),
        ],
    )
    write_records(
        root / "words" / "val.jsonl",
        [
            make_record("w-0", "../shapes/images/c.png", [("Read it.", "blue")]),
            make_record("w-1", "../shapes/images/a.png", [("Read it again.", "white")]),
        ],
    )
    return root


def test_scan_finds_every_record_and_names_each_problem(tmp_path):
    root = _folder(tmp_path)
    scanned, problems = scan_records(root)
    shapes, words = root / "shapes" / "train.jsonl", root / "words" / "val.jsonl"
    assert records_files(root) == [shapes, words]
    assert [(r.file, r.family, r.split, r.record["id"], r.ok) for r in scanned] == [
        (shapes, "scene", "train", "s-0", True),
        (shapes, "scene", "train", "s-1", False),
        (shapes, "scene", "train", "s-1", False),
        (shapes, "scene", "train", "s-3", False),
        (words, "words", "val", "w-0", True),  # no family field: the folder's name
        (words, "words", "val", "w-1", True),
    ]
    assert scanned[0].images == [root / "shapes" / "images" / "a.png"]
    assert scanned[1].images == []  # only valid records get their images checked
    assert problems == [
        f"{shapes}: s-1: duplicate id",
        f"{shapes}: s-1: duplicate id",
        f"{shapes}: s-3: image not found: {root / 'shapes' / 'images' / 'gone.png'}",
    ]
    stats = split_stats(scanned)
    assert list(stats) == [("scene", "train"), ("words", "val")]
    assert (stats["scene", "train"].records, len(stats["scene", "train"].images)) == (4, 2)
    assert (stats["scene", "train"].bad, stats["words", "val"].bad) == (3, 0)
    assert len(stats["words", "val"].images) == 2
    with pytest.raises(DataError, match=r"empty: no \*\.jsonl records files found"):
        records_files(tmp_path / "empty")


def test_round_robin_takes_files_in_turn(tmp_path):
    scanned, _ = scan_records(_folder(tmp_path))
    assert [r.record["id"] for r in pick_round_robin(scanned, 3)] == ["s-0", "w-0", "w-1"]
    assert [r.record["id"] for r in pick_round_robin(scanned, 16)] == ["s-0", "w-0", "w-1"]


def test_tile_draws_a_box_answer(tmp_path):
    root = _folder(tmp_path)
    scanned, _ = scan_records(root)
    tile = record_tile(scanned[0].record, scanned[0].images[0], 64)
    assert tile.width == 64 and tile.height > 64
    assert tile.getpixel((4, 20)) == (255, 0, 255)  # the box [2, 2, 20, 20] at scale 2
    assert tile.getpixel((20, 20)) == (255, 255, 255)  # inside the box: the white image
    plain = record_tile(scanned[4].record, scanned[4].images[0], 64)
    assert plain.getpixel((4, 20)) == (0, 0, 255)  # no box: the blue image


def test_preview_from_python_equals_the_cli(tmp_path, capsys):
    root = _folder(tmp_path)
    sheet, shown = preview_sheet(root, n=2, tile=64)
    scanned, _ = scan_records(root)
    chosen = pick_round_robin(scanned, 2)
    tiles = [record_tile(r.record, r.images[0], 64) for r in chosen]
    assert shown == 2 and sheet.tobytes() == contact_sheet(tiles, 64).tobytes()
    assert write_preview(root, tmp_path / "py" / "sheet.png", n=2, tile=64) == 2
    out = tmp_path / "cli.png"
    assert main(["data", "preview", str(root), "--out", str(out), "--n", "2", "--tile", "64"]) == 0
    assert f"wrote a preview of 2 records to {out}" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "py" / "sheet.png").read_bytes()
    with Image.open(out) as im:
        assert im.tobytes() == sheet.tobytes()


def test_preview_without_usable_records_is_an_error(tmp_path):
    root = tmp_path / "data"
    write_records(root / "x" / "train.jsonl", [make_record("t", None, [("Q?", "A")])])
    with pytest.raises(DataError, match="no valid records with existing images to preview"):
        write_preview(root, tmp_path / "s.png")
