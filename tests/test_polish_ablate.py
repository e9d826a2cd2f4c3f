"""`polyvis ablate` (protocol: none): a one-seed grid prints no spread, and a relative `base:`
path is read from the ablation file's folder, not from where polyvis runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polyvis.nano.ablate import _mean_std, _table, _what, load_ablation, plan

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "nano-tiny.yaml"


def test_one_seed_has_no_spread() -> None:
    one = {"clip | add | mlp": _mean_std([{"scene": 40.0, "mean": 40.0}])}
    table = _table(one)
    assert "±" not in table and "40.0 (n=1)" in table
    assert _what(one) == "one seed per cell, no spread"
    two = {"clip | add | mlp": _mean_std([{"scene": 40.0, "mean": 40.0}] * 2)}
    assert "40.0 ± 0.0" in _table(two)  # two equal seeds: a spread of 0 is a finding
    assert _what(two) == "mean ± std over seeds"


def test_the_html_summary_of_one_seed_has_no_spread_either() -> None:
    from polyvis.eval.html_tables import summary_table

    one = summary_table({"clip | add | mlp": _mean_std([{"scene": 40.0, "mean": 40.0}])})
    assert one.rows[0][1:3] == ["40.0 (n=1)", "40.0 (n=1)"] and one.rows[0][-1] == "-"
    two = summary_table({"clip | add | mlp": _mean_std([{"scene": 40.0, "mean": 40.0}] * 2)})
    assert two.rows[0][1] == "40.0 ± 0.0"


def _ablation(folder: Path, base: str) -> Path:
    test = folder / "test.jsonl"
    test.write_text("")
    spec = {"base": base, "eval": {"files": [str(test)]}, "jobs": 1, "grid": {"seeds": [0]}}
    path = folder / "ab.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _base_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY.read_text())
    return path


def test_relative_base_is_read_from_the_ablation_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "exp"
    base = _base_file(folder / "base.yaml")
    ab = _ablation(folder, "base.yaml")
    monkeypatch.chdir(tmp_path)  # not the ablation's folder: the old code looked here
    spec = load_ablation(ab)
    assert Path(spec["base"]) == base
    assert len(plan(spec, tmp_path / "out")) == 1


@pytest.mark.parametrize("form", ["absolute", "home"])
def test_absolute_and_home_base_paths_still_work(tmp_path: Path, monkeypatch, form: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = _base_file(tmp_path / "home" / "cfg" / "base.yaml")
    given = str(base) if form == "absolute" else "~/cfg/base.yaml"
    spec = load_ablation(_ablation(tmp_path, given))
    assert Path(spec["base"]) == base
