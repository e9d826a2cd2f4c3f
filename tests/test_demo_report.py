"""What the demo prints: the smoke-test notice before the table in --quick (never otherwise), each
cell's family scores with its CI, and last, that the leaderboard holds the answer over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyvis.nano.budget import BUDGET, DEMO_CELLS, QUICK_BUDGET
from polyvis.nano.demo import demo_spec
from polyvis.nano.demo_report import (
    demo_notes,
    demo_table,
    one_seed_note,
    print_summary,
    quick_notice,
    start_banner,
)
from polyvis.nano.fair_cells import label, typed


def _doc() -> dict:
    def entry(mean: float, lo: float, hi: float) -> dict:
        return {"mean": mean, "ci": [lo, hi]}

    cells = [
        {"name": "clip", "selection": {"chosen": {"lr": 0.001}},
         "families": {"scene": entry(40.0, 35.25, 44.5), "ocr": entry(0.0, 0.0, 0.0)},
         "mean": entry(20.0, 17.5, 22.25)},
        {"name": "clip+dino add", "selection": {"chosen": {"lr": 0.003}},
         "families": {"scene": entry(50.0, 45.0, 55.0), "ocr": entry(2.5, 0.0, 5.0)},
         "mean": entry(26.25, 23.0, 29.5)},
    ]  # fmt: skip
    return {"families": ["scene", "ocr"], "cells": cells}


def test_the_table_shows_every_family_and_the_mean_with_its_ci_in_the_demos_order():
    assert demo_table(_doc()).splitlines() == [
        "| cell | scene | ocr | mean |",
        "|---|---:|---:|---:|",
        "| clip | 40.0 [35.2, 44.5] | 0.0 [0.0, 0.0] | 20.0 [17.5, 22.2] |",
        "| clip+dino add | 50.0 [45.0, 55.0] | 2.5 [0.0, 5.0] | 26.2 [23.0, 29.5] |",
    ]


@pytest.mark.parametrize("quick", [True, False])
def test_quick_says_it_is_a_smoke_test_first_and_every_demo_ends_with_the_leaderboard(
    tmp_path: Path, capsys, quick: bool
):
    budget = QUICK_BUDGET if quick else BUDGET
    answers = tmp_path / "cells" / "clip_dino_add" / "lr-0.003" / "seed-2" / "test"
    answers.mkdir(parents=True)
    row = {"question": "How many?", "prediction": "3", "reference": "4"}
    (answers / "answers.jsonl").write_text(json.dumps(row) + "\n")
    print_summary(_doc(), tmp_path, quick, budget, seed=2, seconds=5.0)
    printed = capsys.readouterr().out
    notice = quick_notice(QUICK_BUDGET)
    assert notice.startswith("SMOKE TEST (--quick): these numbers mean nothing.")
    assert f"{QUICK_BUDGET['steps']} training steps on {QUICK_BUDGET['n']} images" in notice
    assert ("SMOKE TEST" in printed) == quick
    if quick:  # said before the table, where the zeros are
        assert printed.index(notice) < printed.index("| clip |")
    # an answer of the cell whose run is there (at its chosen setting and the one seed)
    assert "[clip+dino add] 'How many?' -> '3' (ref '4')" in printed and "[clip] " not in printed
    last = one_seed_note(2)
    assert printed.rstrip().endswith(last)
    assert "One seed (2)" in last and "docs/leaderboard.md holds the answer" in last
    assert demo_notes(quick, budget, 2) == ([notice] if quick else []) + [last]


def test_the_banner_names_every_cell_its_rate_and_the_budget():
    spec = demo_spec(quick=False, jobs=2, seed=0)
    banner = start_banner(spec, BUDGET)
    listed = [
        "+".join(c["encoders"]) + (f" {label(typed(c['fusion'], 'f'))}" if "fusion" in c else "")
        + f" (lr {c['train']['lr']:g})"
        for c in DEMO_CELLS
    ]  # fmt: skip
    assert f"cells: {'; '.join(listed)}\n" in banner and listed[0] == "clip (lr 0.001)"
    # fusions by their leaderboard names, not as Python dicts
    assert "clip+dino+vary concat-channel(align=pool) (lr 0.001)" in banner and "{" not in banner
    assert "mlp(depth=2) adapter on lm-nano, 200 align steps" in banner
    assert "then 800 of fine-tuning, batch 8" in banner and "(400 images per family)" in banner
