"""Bad records and bad options in `polyvis data` (inspect, preview, synth): one-line errors or
listed bad records, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.data.preview import write_preview
from polyvis.data.records import make_record, read_records, validate_record, write_records
from polyvis.data.scan import scan_records, split_stats
from polyvis.errors import ConfigError, DataError


def _record(rid: object = "r-0", **fields: object) -> dict:
    rec = make_record("r-0", "a.png", [("Colour?", "red")], "scene")
    rec["id"] = rid
    rec.update(fields)
    return rec


def _image(folder: Path, name: str = "a.png", colour: str = "red") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(folder / name)


BAD_FIELDS = [
    ({"image": 7}, "r-0", "'image' must be a path string"),
    ({"images": ["a.png", 3]}, "r-0", "'images' must be a list of paths"),
    ({"id": ["a"]}, "#0", "'id' must be a string or an integer, not list"),
    ({"id": {"k": 1}}, "#0", "'id' must be a string or an integer, not dict"),
    ({"family": ["scene"]}, "r-0", "'family' must be a string, not list"),
    ({"family": 3}, "r-0", "'family' must be a string, not int"),
]


@pytest.mark.parametrize(("fields", "label", "problem"), BAD_FIELDS)
def test_a_field_of_the_wrong_type_is_a_bad_record(tmp_path, capsys, fields, label, problem):
    _image(tmp_path / "d")
    rec = _record(**fields)
    if "images" in fields:
        del rec["image"]
    path = write_records(tmp_path / "d" / "train.jsonl", [rec])
    assert problem in validate_record(rec)
    with pytest.raises(DataError) as err:  # what train and eval read through
        read_records(path)
    assert str(err.value) == f"{path}: 1 bad record(s): {label}: {problem}"
    scanned, bad = scan_records(path)
    assert bad == [f"{path}: {label}: {problem}"] and not scanned[0].ok
    assert list(split_stats(scanned)) == [("scene" if "family" not in fields else "d", "train")]
    assert main(["data", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"bad {path}: {label}: {problem}" in out and "1 records, 1 bad" in out


def test_inspect_prints_markup_like_text_as_it_is(tmp_path, capsys):
    folder = tmp_path / "[red]x"
    _image(folder)
    rid = "a[/red] [bold]b"
    recs = [_record(rid, family="[b]f"), _record(rid, family="[b]f"), _record("ok", family="[b]f")]
    path = write_records(folder / "val.jsonl", recs)
    assert main(["data", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count(f"bad {path}: {rid}: duplicate id") == 2
    assert "[b]f" in out and "3 records, 2 bad" in out


def test_preview_skips_an_unreadable_image_and_fills_its_place(tmp_path, capsys):
    root = tmp_path / "data"
    _image(root / "f", "a.png", "red")
    _image(root / "f", "b.png", "blue")
    (root / "f" / "broken.png").write_bytes(b"not a png")
    recs = [
        make_record("broken", "broken.png", [("Q?", "A")]),
        make_record("red", "a.png", [("Q?", "A")]),
        make_record("blue", "b.png", [("Q?", "A")]),
    ]
    records = write_records(root / "f" / "train.jsonl", recs)
    skipped: list[str] = []
    assert write_preview(root, tmp_path / "s.png", n=2, tile=32, skipped=skipped) == 2
    assert len(skipped) == 1
    assert skipped[0].startswith(f"{records}: broken: {root / 'f' / 'broken.png'}: cannot decode")
    out = tmp_path / "cli.png"
    assert main(["data", "preview", str(root), "--out", str(out), "--tile", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote a preview of 2 records to {out}" in printed
    assert "skipped 1 records whose image could not be read" in printed
    with Image.open(out) as im:
        assert im.size[0] > 32  # two tiles side by side

    write_records(records, recs[:1])  # nothing readable left
    with pytest.raises(DataError, match="no valid records with existing images to preview"):
        write_preview(root, tmp_path / "none.png")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--tile", "0", "--tile: must be a positive integer, got 0"),
        ("--n", "-2", "--n: must be a positive integer, got -2"),
        ("--out", "sheet.xyz", "unknown image extension '.xyz'"),
        ("--out", "sheet", "no image extension"),
    ],
)
def test_preview_option_errors_are_one_line(tmp_path, capsys, option, value, message):
    _image(tmp_path / "f")
    write_records(tmp_path / "f" / "train.jsonl", [_record()])
    out = tmp_path / "sheet.png"
    if option == "--out":
        out = tmp_path / value
    argv = ["data", "preview", str(tmp_path), "--out", str(out)]
    if option != "--out":
        argv += [option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polyvis: error: {option}: ") and message in err
    assert len(err.splitlines()) == 1 and not out.exists()
    with pytest.raises(ConfigError, match=rf"^{option.lstrip('-')}: "):  # the Python call
        write_preview(tmp_path, out, **({option[2:]: int(value)} if option != "--out" else {}))


@pytest.mark.parametrize("bad", ["scene=hard,ocr", "scene=hard,=easy", "scene="])
def test_synth_difficulty_part_without_a_level_is_one_line(tmp_path, capsys, bad):
    argv = ["data", "synth", "--families", "scene", "--n", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--difficulty", bad, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    part = [p for p in bad.split(",") if not p.partition("=")[0] or not p.partition("=")[2]][0]
    assert err == f"polyvis: error: --difficulty: {part!r} is not FAMILY=LEVEL (e.g. scene=hard)"
    assert not (tmp_path / "o").exists()  # refused before generating anything


def test_an_out_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys) -> None:
    from polyvis.cli import main

    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    argv = ["data", "synth", "--families", "scene", "--n", "2", "--size", "16"]
    assert main([*argv, "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polyvis: error: {taken}") and "Not a directory" in err
    assert len(err.splitlines()) == 1
