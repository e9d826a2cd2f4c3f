"""Reports: results.md / results.png for one run, compare.md / compare.png and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from polyvis.cli import main
from polyvis.errors import DataError
from polyvis.eval.report import compare, load_results, results_table, write_report

CLIP = {
    "model": "nano-clip",
    "scores": {"ocr": 0.25, "scene": 0.75},
    "overall": 0.5,
    "n": {"scene": 10, "ocr": 20},
}
FUSED = {
    "model": "nano-clip+vary",
    "name": "fused",
    "scores": {"scene": 0.8, "ocr": 0.6, "chart": 0.4},
    "n": {"scene": 10, "ocr": 20, "chart": 5},
}


def _run_dir(root: Path, name: str, results: dict) -> Path:
    d = root / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return d


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_results_table_rows():
    table = results_table(CLIP)
    lines = table.splitlines()
    assert lines[0] == "| family | metric | score | n |"
    # Families in FAMILY_METRICS order (scene before ocr), with their primary metric.
    assert lines[2] == "| scene | exact_match | 0.7500 | 10 |"
    assert lines[3] == "| ocr | exact_match | 0.2500 | 20 |"
    assert lines[4] == "| **overall** |  | 0.5000 | 30 |"


def test_results_table_metric_override_and_overall_default():
    res = {
        "model": "m",
        "scores": {"table": 0.2, "chart": 0.6},
        "metrics": {"table": "exact_match"},
    }
    lines = results_table(res).splitlines()
    assert lines[2] == "| chart | relaxed_accuracy | 0.6000 | - |"
    assert lines[3] == "| table | exact_match | 0.2000 | - |"
    assert lines[4] == "| **overall** |  | 0.4000 | - |"  # unweighted mean


def test_write_report_round_trip(tmp_path):
    paths = write_report(CLIP, tmp_path / "run")
    assert set(paths) == {"json", "md", "png"}
    assert load_results(tmp_path / "run") == CLIP
    md = paths["md"].read_text()
    assert md.startswith("# Results: nano-clip\n")
    assert results_table(CLIP) in md
    w, h = _png_size(paths["png"])
    assert w > 100 and h > 100


@pytest.mark.parametrize(
    "results, field",
    [
        ({"scores": {"a": 1.0}}, "'model'"),
        ({"model": "m", "scores": {}}, "'scores'"),
        ({"model": "m", "scores": {"ocr": "high"}}, "scores.ocr"),
        ({"model": "m", "scores": {"ocr": 1.0}, "n": {"ocr": 1.5}}, "'n'"),
        ({"model": "m", "scores": {"ocr": 1.0}, "overall": None}, "'overall'"),
    ],
)
def test_bad_results_name_file_and_field(tmp_path, results, field):
    d = _run_dir(tmp_path, "bad", results)
    with pytest.raises(DataError) as err:
        load_results(d)
    assert str(d / "results.json") in str(err.value)
    assert field in str(err.value)


def test_compare_table_and_files(tmp_path):
    a = _run_dir(tmp_path, "clip", CLIP)
    b = _run_dir(tmp_path, "run2", FUSED)
    out = tmp_path / "cmp"
    table = compare([a, b], out)
    lines = table.splitlines()
    assert lines[0] == "| run | scene | ocr | chart | mean |"
    # Rows: dir name when there is no "name", else the results' name; mean over own families.
    assert lines[2] == "| clip | 0.7500 | 0.2500 | - | 0.5000 |"
    assert lines[3] == "| fused | 0.8000 | 0.6000 | 0.4000 | 0.6000 |"
    md = (out / "compare.md").read_text()
    assert table in md
    assert "different families" in md
    w, h = _png_size(out / "compare.png")
    assert w > 100 and h > 100


def test_compare_duplicate_names_are_kept_apart(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _run_dir(tmp_path / "x", "run", CLIP)
    b = _run_dir(tmp_path / "y", "run", CLIP)
    table = compare([a, b], tmp_path / "out")
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert names == ["run", "run (2)"]
    assert "different families" not in (tmp_path / "out" / "compare.md").read_text()


def test_compare_escapes_pipes_in_run_names(tmp_path):
    # an ablation's runs are named "cell | setting | seed S"; unescaped, each row would have
    # more cells than the header
    a = _run_dir(tmp_path, "a", {**CLIP, "name": "clip | lr=0.001 | seed 0"})
    b = _run_dir(tmp_path, "b", {**FUSED, "name": "fused | lr=0.003 | seed 0"})
    table = compare([a, b], tmp_path / "out")
    header, _, *rows = table.splitlines()
    cells = re.compile(r"(?<!\\)\|")
    assert all(len(cells.split(r)) == len(cells.split(header)) for r in rows)
    assert rows[0].startswith(r"| clip \| lr=0.001 \| seed 0 | 0.7500 |")


def test_compare_missing_results_names_file(tmp_path):
    a = _run_dir(tmp_path, "clip", CLIP)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty / "results.json")):
        compare([a, empty], tmp_path / "out")
    with pytest.raises(DataError, match="no result directories"):
        compare([], tmp_path / "out")


def test_compare_bad_json_names_file(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=f"{d / 'results.json'}: not valid JSON"):
        compare([d], tmp_path / "out")


def test_cli_compare_prints_table(tmp_path, capsys):
    a = _run_dir(tmp_path, "clip", CLIP)
    b = _run_dir(tmp_path, "fused", FUSED)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert compare([a, b], tmp_path / "again") in printed
    assert (out / "compare.md").is_file() and (out / "compare.png").is_file()


def test_cli_compare_missing_file_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["compare", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"polyvis: error: {missing / 'results.json'}: results file not found"
