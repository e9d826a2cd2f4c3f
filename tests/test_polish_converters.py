"""`polyvis data convert`: a failed conversion removes the folders it made (never one that was
there), and annotation files that are not UTF-8 are one line naming the file."""

from __future__ import annotations

from pathlib import Path

from polyvis.cli import main


def _fail(tmp_path: Path, out: Path, capsys) -> str:
    """A COCO conversion that fails on its input (no annotations file); its one-line error."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    argv = ["data", "convert", "coco", "--annotations", str(tmp_path / "none.json")]
    argv += ["--images", str(tmp_path / "imgs"), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polyvis: error:") and "\n" not in err
    return err


def test_a_failed_conversion_leaves_no_new_folder(tmp_path: Path, capsys) -> None:
    assert "none.json: COCO annotations file not found" in _fail(
        tmp_path, tmp_path / "a/b/out", capsys
    )
    assert not (tmp_path / "a").exists()


def test_a_failed_conversion_keeps_the_folders_that_were_there(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    _fail(tmp_path, mine, capsys)  # OUT itself was there, empty
    assert mine.is_dir()
    _fail(tmp_path, mine / "new" / "deeper", capsys)
    assert mine.is_dir() and not (mine / "new").exists()


def _error(kind: str, args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["data", "convert", kind, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polyvis: error:") and "\n" not in err
    return err


def test_coco_file_not_utf8_is_one_line(tmp_path: Path, capsys) -> None:
    ann = tmp_path / "instances.json"
    ann.write_bytes(
        b'{"images": [], "annotations": [], "categories": [{"id": 1, "name": "caf\xe9"}]}'
    )
    (tmp_path / "imgs").mkdir()
    args = ["--annotations", str(ann), "--images", str(tmp_path / "imgs")]
    err = _error("coco", [*args, "--out", str(tmp_path / "out")], capsys)
    assert (
        err == f"polyvis: error: {ann}: not UTF-8 text (byte 0xe9 at offset 71); save it as UTF-8"
    )
    assert not (tmp_path / "out").exists()


def test_pubtabnet_file_not_utf8_names_the_line(tmp_path: Path, capsys) -> None:
    ann = tmp_path / "PubTabNet_2.0.0.jsonl"
    ann.write_bytes(
        b'{"split": "val", "filename": "a.png"}\n{"split": "train", "filename": "\xff.png"}\n'
    )
    err = _error("pubtabnet", ["--annotations", str(ann), "--out", str(tmp_path / "out")], capsys)
    assert err.startswith(f"polyvis: error: {ann}:2: not UTF-8 text (byte 0xff")


def test_im2latex_list_not_utf8_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "im2latex_formulas.lst").write_text("x^2\n")
    (tmp_path / "formula_images").mkdir()
    lst = tmp_path / "im2latex_train.lst"
    lst.write_bytes(b"0 caf\xe9 basic\n")
    formulas = str(tmp_path / "im2latex_formulas.lst")
    err = _error("im2latex", ["--formulas", formulas, "--out", str(tmp_path / "out")], capsys)
    assert f"{lst}: not UTF-8 text" in err
