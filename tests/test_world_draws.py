"""benchmarks/world_draws.py on tiny fake grids: one run per draw, the draws resampled as seeds."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests._bench import load_benchmark
from tests.test_compare_arms import ITEMS, _grid


@pytest.fixture()
def world_draws(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_benchmark("world_draws", monkeypatch)  # compare_arms beside it, as when run


def _row(text: str, cell: str) -> list[str]:
    """The cell's row of the first table (the comparisons table starts with the cell too)."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _draw(out: Path, clip: float, fused: float, extra: bool = False) -> Path:
    """A grid with seed 0 only: every item of clip scores `clip`, of the fused cell `fused`."""
    cells = {
        "clip": ({"lr": 0.001}, [[clip] * len(ITEMS)]),
        "clip+dino add(align=pool)": ({"lr": 0.003}, [[fused] * len(ITEMS)]),
    }
    if extra:
        cells["only here"] = ({"lr": 0.001}, [[1.0] * len(ITEMS)])
    return _grid(out, cells, list(cells))


def test_each_draw_is_one_column_and_the_mean_is_over_draws(world_draws, tmp_path: Path, capsys):
    a = _draw(tmp_path / "w0", clip=0.5, fused=1.0, extra=True)
    b = _draw(tmp_path / "w1", clip=0.0, fused=0.5)
    out = tmp_path / "draws"
    argv = ["--world", f"0={a}", "--world", f"1={b}", "--baseline", "clip", "--out", str(out)]
    assert world_draws.main(argv) == 0
    text = capsys.readouterr().out
    assert "only here" not in text  # a cell not in every draw is left out
    assert _row(text, "clip")[1:4] == ["50.0", "0.0", "25.0 [0.0, 50.0]"]
    fused = _row(text, "clip+dino add(align=pool)")
    assert fused[1:3] == ["100.0", "50.0"] and fused[3].startswith("75.0 [50.0, 100.0]")
    diff = [ln for ln in text.splitlines() if ln.startswith("| clip+dino add(align=pool) | clip |")]
    assert diff and "+50.0 [+50.0, +50.0]" in diff[0]  # every draw: +50, so no spread
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["worlds"] == {"0": str(a), "1": str(b)} and doc["run_seeds"] == {"0": 0, "1": 0}
    assert out.with_suffix(".md").read_text().strip() == text.strip()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_draw_takes_from_each_draw_its_own_run_seed(world_draws, tmp_path: Path, capsys):
    a = _draw(tmp_path / "w0", clip=0.5, fused=1.0)
    b = _grid(  # draw 1 has run seeds 0 and 1; with --seed draw only seed 1 counts
        tmp_path / "w1",
        {
            "clip": ({"lr": 0.001}, [[0.0] * len(ITEMS), [1.0] * len(ITEMS)]),
            "clip+dino add(align=pool)": ({"lr": 0.003}, [[0.0] * len(ITEMS)] * 2),
        },
        ["clip", "clip+dino add(align=pool)"],
    )
    argv = ["--world", f"0={a}", "--world", f"1={b}", "--seed", "draw"]
    assert world_draws.main(argv) == 0
    text = capsys.readouterr().out
    assert "| cell | draw 0, seed 0 | draw 1, seed 1 |" in text
    assert _row(text, "clip")[1:3] == ["50.0", "100.0"]
    with pytest.raises(SystemExit, match="no cell has its own seed's test run in every draw"):
        world_draws.main(["--world", f"0={a}", "--world", f"2={b}", "--seed", "draw"])


def test_bad_arguments_name_the_problem(world_draws, tmp_path: Path, capsys):
    a = _draw(tmp_path / "w0", clip=0.5, fused=1.0)
    with pytest.raises(SystemExit, match="--baseline dino: not a cell of every draw"):
        world_draws.main(["--world", f"0={a}", "--world", f"1={a}", "--baseline", "dino"])
    with pytest.raises(SystemExit, match="no cell has a seed-3 test run in every draw"):
        world_draws.main(["--world", f"0={a}", "--world", f"1={a}", "--seed", "3"])
    with pytest.raises(SystemExit):
        world_draws.main(["--world", f"zero={a}", "--world", f"1={a}"])
    err = capsys.readouterr().err
    assert "'zero=" in err and "give EXPERT_SEED=OUT" in err
    with pytest.raises(SystemExit):
        world_draws.main(["--world", f"0={a}", "--world", f"1={a}", "--seed", "first"])
    assert "'first': give a run seed (0, 1, ...) or 'draw'" in capsys.readouterr().err
