"""benchmarks/compare_arms.py on two tiny fake grids: paired differences, ranks, errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests._bench import load_benchmark

ITEMS = [(f"scene-test-{i:06d}", "scene") for i in range(4)] + [
    (f"ocr-test-{i:06d}", "ocr") for i in range(3)
]


@pytest.fixture()
def compare_arms(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_benchmark("compare_arms", monkeypatch)  # paired_cells beside it, as when run


def _answers(path: Path, scores: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": i, "family": f, "score": s, "prediction": "x"} for (i, f), s in zip(ITEMS, scores)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _grid(out: Path, cells: dict[str, tuple[dict, list[list[float]]]], ranks: list[str]) -> Path:
    """A fake `polyvis ablate` folder: {cell name: (chosen setting, per-seed scores)}; `ranks`
    lists the names best first, written to leaderboard.json in another (grid) order."""
    from polyvis.nano.fair_cells import slug
    from polyvis.nano.fair_plan import Setting

    for name, (chosen, per_seed) in cells.items():
        for seed, scores in enumerate(per_seed):
            run = out / "cells" / slug(name) / Setting(chosen).slug / f"seed-{seed}"
            _answers(run / "test" / "answers.jsonl", scores)
    selection = {"seed": 0, "cells": {n: {"chosen": c} for n, (c, _) in cells.items()}}
    (out / "selection.json").write_text(json.dumps(selection))
    rows = [{"name": n, "rank": ranks.index(n) + 1} for n in reversed(list(cells))]
    (out / "leaderboard.json").write_text(json.dumps({"cells": rows}))
    return out


def _row(text: str, cell: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {cell} |")]
    return [c.strip() for c in line.strip("|").split("|")]


MIXED = [[1, 0, 1, 0, 1, 0, 0.5], [0, 1, 1, 0, 0, 1, 0.25]]
WRONG, RIGHT = [[0.0] * len(ITEMS)] * 2, [[1.0] * len(ITEMS)] * 2


@pytest.fixture
def grids(tmp_path: Path) -> tuple[Path, Path]:
    a = _grid(
        tmp_path / "a",
        {
            "clip": ({"lr": 0.001}, MIXED),
            "clip+dino add(align=pool)": ({"lr": 0.003}, WRONG),
            "only in a": ({"lr": 0.001}, MIXED),
        },
        ["clip", "only in a", "clip+dino add(align=pool)"],
    )
    b = _grid(
        tmp_path / "b",
        {"clip": ({"lr": 0.001}, MIXED), "clip+dino add(align=pool)": ({"lr": 0.001}, RIGHT)},
        ["clip+dino add(align=pool)", "clip"],
    )
    return a, b


def test_paired_differences_and_ranks(compare_arms, grids, tmp_path: Path, capsys) -> None:
    a, b = grids
    md = tmp_path / "cmp.md"
    assert compare_arms.main([str(a), str(b), "--names", "main", "warm", "--out", str(md)]) == 0
    text = capsys.readouterr().out
    assert md.read_text() == text
    assert "| cell | rank in main | main mean [CI] | rank in warm |" in text
    assert "only in a" not in text
    # The same answers in both arms: a zero difference with a zero-width CI. Scene 50, OCR 45.8.
    clip = _row(text, "clip")
    assert clip[2].startswith("47.9 [") and clip[4] == clip[2]
    assert [clip[1], clip[3], clip[5], clip[6]] == ["1", "2", "+0.0 [+0.0, +0.0]", "1.000"]
    # All wrong in a, all right in b (another lr chosen in a): +100 points, certainly.
    fused = _row(text, "clip+dino add(align=pool)")
    assert fused[1:] == [
        "3",
        "0.0 [0.0, 0.0]",
        "1",
        "100.0 [100.0, 100.0]",
        "+100.0 [+100.0, +100.0]",
        "< 0.001",
    ]
    # Over the two common cells the orders are reversed.
    assert "Spearman rank correlation over 2 cells: -1.000" in text
    assert "first in main: clip; first in warm: clip+dino add(align=pool)" in text


def test_spearman_matches_the_definition(compare_arms) -> None:
    assert compare_arms.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert compare_arms.spearman([1, 5, 9], [3, 2, 1]) == -1.0
    assert compare_arms.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_only_common_seeds_are_paired(compare_arms, grids, capsys) -> None:
    a, b = grids
    extra = b / "cells" / "clip" / "lr-0.001" / "seed-7" / "test" / "answers.jsonl"
    _answers(extra, RIGHT[0])
    assert compare_arms.main([str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "seeds [(0, 1)]" in text
    assert _row(text, "clip")[5] == "+0.0 [+0.0, +0.0]"


def test_missing_selection_names_the_file(compare_arms, grids) -> None:
    a, b = grids
    (b / "selection.json").unlink()
    with pytest.raises(SystemExit) as exc:
        compare_arms.main([str(a), str(b)])
    assert str(exc.value) == f"{b / 'selection.json'}: not found"


def test_missing_answers_names_the_folder(compare_arms, grids) -> None:
    a, b = grids
    folder = a / "cells" / "clip_dino_add_align=pool" / "lr-0.003"
    for seed in (0, 1):
        (folder / f"seed-{seed}" / "test" / "answers.jsonl").unlink()
    with pytest.raises(SystemExit) as exc:
        compare_arms.main([str(a), str(b)])
    assert str(exc.value) == f"{folder}: no seed-S/test/answers.jsonl"
