"""benchmarks/ scripts that run in seconds, run end to end at their smallest settings: a renamed
polyvis name they import or call breaks them silently unless they run here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from tests._bench import load_benchmark


def _run(monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> None:
    """The script's main() as `python benchmarks/NAME.py ARGS` runs it (some read sys.argv)."""
    bench = load_benchmark(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    assert bench.main() in (None, 0)


def _table(out: str) -> list[list[str]]:
    """The markdown table rows of the output, header and rule left out."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in out.splitlines() if ln.startswith("|")]  # fmt: skip
    return [r for r in rows if not set(r[0]) <= set("-:")][1:]


def test_binding_chance_levels(monkeypatch, capsys) -> None:
    _run(monkeypatch, "binding_chance", "--n", "200", "--levels", "easy")
    rows = {r[1]: r for r in _table(capsys.readouterr().out)}
    assert set(rows) == {"binding / `position_colour`", "binding / `colour_text`",
                         "binding / `position_text`", "chartbind / `colour_value`"}  # fmt: skip
    colour = rows["binding / `position_colour`"]
    assert colour[0] == "easy" and int(colour[2]) > 0
    assert colour[3] == "0.167"  # a uniform guess over six colours
    for row in rows.values():  # at easy, one expert alone cannot tell two candidates apart
        assert row[6] == "0.500"


def test_bench_synth_counts_each_family(monkeypatch, capsys) -> None:
    _run(monkeypatch, "bench_synth", "--n", "4", "--families", "scene,ocr")
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(scene|ocr)\s+[\d.]+\s+[\d.]+\s+(\d+)$", out, re.M))
    assert set(rows) == {"scene", "ocr"}, out
    assert int(rows["ocr"]) == 4 and int(rows["scene"]) >= 4  # scene asks several per image


def _setting(folder: Path, scores: dict[int, list[float]], split: str = "test") -> Path:
    """A fair grid's setting folder: seed-S/SPLIT/answers.jsonl per seed, binding items."""
    for seed, values in scores.items():
        rows = [{"id": f"binding-{split}-{i:06d}-{'position_colour' if i % 2 else 'colour_text'}",
                 "family": "binding", "score": s, "prediction": "x"}
                for i, s in enumerate(values)]  # fmt: skip
        path = folder / f"seed-{seed}" / split / "answers.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_paired_cells_difference(monkeypatch, tmp_path, capsys) -> None:
    a = _setting(tmp_path / "a", {0: [0, 0, 1, 0], 1: [0, 1, 0, 0], 2: [1, 0, 0, 0]})
    b = _setting(tmp_path / "b", {0: [1, 1, 1, 1], 1: [1, 1, 1, 0]})
    bench = load_benchmark("paired_cells", monkeypatch)
    assert bench.main([str(a), str(b), "--names", "fp32", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "seeds [0, 1]" in out  # only the seeds both have
    assert re.search(r"^fp32: 25\.0 \[", out, re.M), out
    assert re.search(r"^bf16: 87\.5 \[", out, re.M), out
    assert re.search(r"^bf16 - fp32: \+62\.5 \[[+-][\d.]+, [+-][\d.]+\], p = [\d.]+$", out, re.M)


def test_question_types_table(monkeypatch, tmp_path, capsys) -> None:
    a = _setting(tmp_path / "a", {0: [0, 1, 0, 1], 1: [0, 1, 0, 1]}, "val")
    b = _setting(tmp_path / "b", {0: [1, 0, 1, 0]}, "val")
    bench = load_benchmark("question_types", monkeypatch)
    assert bench.main([f"one={a}", f"two={b}", "--split", "val"]) == 0
    rows = {r[0]: r[1:] for r in _table(capsys.readouterr().out)}
    # both binding types need two experts; odd ids ask position_colour
    assert rows["**binding/position_colour** (two experts)"][0].startswith("100.0 [")
    assert rows["**binding/colour_text** (two experts)"][0].startswith("0.0 [")
    assert rows["**binding/colour_text** (two experts)"][1].startswith("100.0 [")


def test_bench_tiling_pages(monkeypatch, capsys) -> None:
    _run(monkeypatch, "bench_tiling", "--pages", "--quick")
    rows = {(r[0], r[1]): r for r in _table(capsys.readouterr().out)}
    assert set(rows) == {("ocrpage 128x128", "untiled"), ("tablepage 192x64", "untiled"),
                         ("ocrpage 128x128", "2x2 + thumbnail"),
                         ("tablepage 192x64", "1x3 + thumbnail")}  # fmt: skip
    for (_, tiling), row in rows.items():
        views, tokens = int(row[2]), int(row[3])
        assert tokens == 64 * views  # vary-nano's 8 x 8 tokens per view
        if tiling == "untiled":
            assert views == 1 and row[6] == row[8] == row[10] == "1.00"
    assert int(rows["ocrpage 128x128", "2x2 + thumbnail"][2]) == 5


def test_lm_copy_trial_trains_on_copy_lines(monkeypatch, tmp_path, capsys) -> None:
    from polyvis.data.synthetic import generate
    from polyvis.nano.budget import FAMILIES

    world = tmp_path / "world"
    generate(FAMILIES, 8, 0, world, image_size=32, progress=False)
    out = tmp_path / "copy"
    _run(monkeypatch, "lm_copy_trial", str(world), "--out", str(out), "--lines", "12",
         "--steps", "2")  # fmt: skip
    assert re.search(r"^final loss [\d.]+, world val loss [\d.]+$", capsys.readouterr().out, re.M)
    lines = (out / "data" / "copy" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 12
    text = json.loads(lines[0])["conversations"][0]["value"]
    assert "What does the text say?" in text
    assert (out / "lm" / "training_log.json").is_file()


def test_bench_serve_parses_without_aiohttp(monkeypatch, capsys) -> None:
    """aiohttp is an extra ('.[bench]'): without it --help and --client httpx still work."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # `import aiohttp` raises ImportError
    monkeypatch.delitem(sys.modules, "serve_load", raising=False)  # restored afterwards
    bench = load_benchmark("bench_serve", monkeypatch)
    sys.modules.pop("serve_load")  # the one imported without aiohttp is not kept
    monkeypatch.setattr(sys, "argv", ["bench_serve.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args()
    assert exit_.value.code == 0 and "--client" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["bench_serve.py", "--client", "httpx", "--requests", "4"])
    assert bench.parse_args().requests == 4
    monkeypatch.setattr(sys, "argv", ["bench_serve.py"])
    with pytest.raises(SystemExit, match="needs aiohttp"):
        bench.parse_args()


def test_run_launch_compares_both_ways_on_the_same_bytes(monkeypatch, capsys) -> None:
    _run(monkeypatch, "bench_run_launch", "--runs", "1", "--steps", "2", "--repeats", "1")
    out = capsys.readouterr().out
    assert [r[0] for r in _table(out)] == ["a process each", "forked"]
    assert re.search(r"forked / a process each: wall \d+\.\d\dx, CPU \d+\.\d\dx", out)
    assert out.rstrip().endswith("weights and answers identical: True")


def test_constant_floor_chooses_on_val_and_scores_on_test(tmp_path, monkeypatch, capsys) -> None:
    def rows(split: str, answers: list[tuple[str, str]]) -> Path:
        path = tmp_path / f"{split}.jsonl"
        lines = [{"id": f"scene-{split}-{i:06d}-{kind}", "family": "scene", "metric": "exact_match",
                  "reference": ref, "prediction": ref, "score": 1.0}
                 for i, (kind, ref) in enumerate(answers)]  # fmt: skip
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return path

    # val favours "1" overall and per type; test would favour "no": the floor keeps val's choice
    val = rows("val", [("count", "1"), ("count", "1"), ("relation", "yes"), ("relation", "1")])
    test = rows("test", [("count", "2"), ("relation", "no"), ("relation", "no"), ("count", "1")])
    _run(monkeypatch, "constant_floor", "--val", str(val), "--test", str(test))
    out = capsys.readouterr().out
    (row,) = _table(out)
    assert row[:5] == ["scene", "exact_match", "`1`", "25.0", "25.0"] and row[5] == "100.0"
    assert "scene: count `1`, relation `1`" in out


def test_expert_malloc_builds_one_expert_both_ways(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path))
    _run(monkeypatch, "bench_expert_malloc", "--expert", "lm-nano", "--quick", "--steps", "8",
         "--every", "4")  # fmt: skip
    out = capsys.readouterr().out
    rows = _table(out)
    assert [r[0] for r in rows] == ["1-4", "5-8"], out
    assert all(float(r[1]) >= 0 and int(r[2]) >= 0 and float(r[3]) >= 0 for r in rows)
    assert "after the first block: kept takes" in out
