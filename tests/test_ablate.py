"""The ablation file: its keys (the `align` stage it documents among them), and the grid's runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polyvis.cli import main
from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation, plan, protocol_of

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def base() -> dict:
    cfg = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(mode="json")
    cfg["train"].update(stage="finetune", lr_llm=5e-4)
    return cfg


def test_an_ablation_with_an_align_stage_trains_it_first_in_every_run(tmp_path: Path):
    spec = {
        "base": base(),
        "grid": {"encoders": [["clip"], ["clip", "dino"]], "seeds": [0, 1]},
        "eval": {"files": [str(tmp_path / "test.jsonl")]},
        "align": {"train": {"max_steps": 3}},
    }
    loaded = load_ablation(write(tmp_path / "ab.yaml", spec))  # `align` was rejected
    assert loaded["align"] == {"train": {"max_steps": 3}}
    runs = plan(loaded, tmp_path / "out")
    assert [(cell, seed) for cell, seed, _ in runs] == [
        (f"{names} | concat-channel(align=interpolate) | mlp(depth=2)", seed)
        for names in ("clip", "clip+dino")
        for seed in (0, 1)
    ]
    for _, seed, run in runs:
        first, own = run.align, run.config
        assert first.train.stage == "align" and first.train.max_steps == 3
        assert first.train.seed == seed and first.train.lr_llm is None
        assert first.model == own.model and own.train.stage == "finetune"
        assert own.train.init_from == str(run.out / "align") and own.train.max_steps == 20
    # a mistake in the align section names it (it would fail every cell alike)
    spec["align"] = {"train": {"max_stepz": 3}}
    with pytest.raises(ConfigError) as err:
        plan(load_ablation(write(tmp_path / "bad.yaml", spec)), tmp_path / "out")
    assert err.value.field == "align.train.max_stepz"


def test_ablate_rejects_an_unknown_field_or_axis(tmp_path: Path, capsys):
    with pytest.raises(ConfigError) as err:
        load_ablation(write(tmp_path / "a.yaml", {"nano": True, "aling": {}}))
    assert err.value.field == "aling" and "valid: nano, base, quick, grid, eval, jobs, align" in (
        str(err.value)
    )
    spec = tmp_path / "bad.yaml"
    spec.write_text("nano: true\ngrid:\n  fusions: [add]\n")
    assert main(["ablate", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "grid.fusions" in capsys.readouterr().err


def test_nano_ablations_default_to_the_fair_protocol_and_none_keeps_the_old_grid(tmp_path: Path):
    assert protocol_of(load_ablation(write(tmp_path / "n.yaml", {"nano": True}))) == "fair"
    assert protocol_of(load_ablation(write(tmp_path / "b.yaml", {"base": base()}))) == "none"
    old = {"nano": True, "protocol": "none", "align": {"train": {"max_steps": 3}}}
    assert protocol_of(load_ablation(write(tmp_path / "o.yaml", old))) == "none"
    # each protocol's own keys and axes are errors under the other
    for spec, field in (
        ({"nano": True, "protocol": "none", "test_data_seed": 2}, "test_data_seed"),
        ({"nano": True, "protocol": "none", "grid": {"controls": ["clip"]}}, "grid.controls"),
        ({"nano": True, "align": {"train": {"max_steps": 3}}}, "align"),
        ({"base": base(), "arm": "sensitivity"}, "arm"),
    ):
        with pytest.raises(ConfigError) as err:
            load_ablation(write(tmp_path / "x.yaml", spec))
        assert err.value.field == field
    # the leaderboard's file is a fair nano grid of all nine fusions, experts and twins
    board = load_ablation(ROOT / "configs" / "leaderboard-nano.yaml")
    assert protocol_of(board) == "fair" and len(board["grid"]["fusion"]) == 9
    assert board["grid"]["controls"] == ["clip", "vary", "dino"]
    assert board["grid"]["seeds"] == [0, 1, 2, 3, 4]  # five: the CI target (issue 19)
    assert [e for e in board["grid"]["encoders"] if len(e) > 1] == [
        ["clip", "dino"],
        ["clip", "dino", "vary"],
    ]


def test_every_shipped_ablation_file_loads():
    """Each `polyvis ablate` file in configs/ (those with a grid) passes the file-level checks,
    so a typo in a field name fails here, not an hour into a grid."""
    files = [
        p
        for p in sorted((ROOT / "configs").glob("*.yaml"))
        if "grid" in yaml.safe_load(p.read_text())
    ]
    assert len(files) >= 8
    for path in files:
        spec = load_ablation(path)
        assert spec["grid"], path.name
        if protocol_of(spec) == "fair" and spec.get("val_only"):
            assert "test_data_seed" not in spec, f"{path.name}: a val-only pilot makes no test set"
