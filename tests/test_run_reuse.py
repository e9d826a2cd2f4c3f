"""A finished run is reused only for the config it was trained with: `polyvis train` and the
ablation planner (`train_runs`) refuse a changed one, naming the field, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _inline_runs import use_launcher
from polyvis.config import dump_config, load_config
from polyvis.errors import ConfigError
from polyvis.nano.runs import RunSpec, pending_stages, train_runs
from polyvis.train.run_dir import check_resumable

ROOT = Path(__file__).resolve().parents[1]
TINY = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(mode="json", exclude_none=True)
CFG = {
    "model": TINY["model"],
    "data": {"train": ["qa.jsonl"], "max_length": 256},
    "train": {"stage": "finetune", "max_steps": 70, "lr": 2e-3, "seed": 3},
}


def _finished(out: Path, cfg: dict, evaluated: bool = True) -> None:
    """A run directory as training and scoring leave it (no weights are needed to plan)."""
    out.mkdir(parents=True)
    dump_config(load_config(cfg), out / "config.yaml")
    (out / "done.json").write_text('{"seconds": 2.0}')
    if evaluated:
        (out / "eval").mkdir()
        (out / "eval" / "results.json").write_text("{}")


def _with(section: str, **values) -> dict:
    return {**CFG, section: {**CFG[section], **values}}


def _no_launch(monkeypatch) -> list:
    launched: list = []
    use_launcher(monkeypatch, lambda *a: launched.append(a) or pytest.fail("launched"))
    return launched


def test_a_grid_with_changed_steps_is_refused_naming_the_field_and_run(tmp_path, monkeypatch):
    _no_launch(monkeypatch)
    out = tmp_path / "r"
    _finished(out, CFG)
    spec = RunSpec.build("clip | seed 3", _with("train", max_steps=100), out, [tmp_path / "t"])
    with pytest.raises(ConfigError, match=r"^train\.max_steps: run clip \| seed 3: 100 differs "
                       r"from the finished run in .*\(70\); use a new --out"):  # fmt: skip
        train_runs([spec])


def test_settings_that_change_how_not_what_keep_a_finished_run(tmp_path, monkeypatch):
    _no_launch(monkeypatch)
    out = tmp_path / "r"
    _finished(out, CFG)
    changed = _with("train", save_every=10, keep_last=5, cache_features=True, num_workers=2)
    spec = RunSpec.build("r", changed, out, [tmp_path / "t"])
    assert pending_stages(spec) == []
    assert train_runs([spec]) == {"r": 2.0}


def test_measured_scales_match_a_planned_auto(tmp_path, monkeypatch):
    _no_launch(monkeypatch)
    two = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(mode="json")["model"]
    two["encoders"] = [two["encoders"][0], {**two["encoders"][0], "name": "b"}]
    two["fusion"] = {"type": "concat-channel", "scales": [1.0, 0.5]}
    trained = {**CFG, "model": two}
    out = tmp_path / "r"
    _finished(out, trained)
    planned = {**trained, "model": {**two, "fusion": {"type": "concat-channel", "scales": "auto"}}}
    assert train_runs([RunSpec.build("r", planned, out, [tmp_path / "t"])]) == {"r": 2.0}
    other = {
        **trained,
        "model": {**two, "fusion": {"type": "concat-channel", "scales": [1.0, 1.0]}},
    }
    with pytest.raises(ConfigError, match=r"^model: run r: differs from the config of the run"):
        train_runs([RunSpec.build("r", other, out, [tmp_path / "t"])])


def test_a_changed_align_stage_is_refused_before_its_run_is_read(tmp_path, monkeypatch):
    _no_launch(monkeypatch)
    out = tmp_path / "r"
    spec = RunSpec.build("r", CFG, out, [tmp_path / "t"], align={"train": {"max_steps": 30}})
    _finished(out / "align", json.loads(json.dumps(_align_of(spec))), evaluated=False)
    again = RunSpec.build("r", CFG, out, [tmp_path / "t"], align={"train": {"max_steps": 40}})
    with pytest.raises(ConfigError, match=r"^train\.max_steps: run r: 40 differs .*align \(30\)"):
        train_runs([again])


def _align_of(spec: RunSpec) -> dict:
    return spec.align.model_dump(mode="json", exclude_none=True)


def test_a_checkpointed_run_still_resumes_with_more_steps(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    (run / "checkpoints" / "step-5" / "state.json").write_text("{}")
    dump_config(load_config(CFG), run / "config.yaml")
    check_resumable(run, load_config(_with("train", max_steps=200)))  # not refused
    with pytest.raises(ConfigError, match=r"^train\.seed: 4 differs from the run in"):
        check_resumable(run, load_config(_with("train", seed=4)))


def test_a_path_written_relative_then_absolute_is_the_same_run(tmp_path, monkeypatch):
    """Runs configured with a relative folder (an old relative --out or POLYVIS_CACHE) are
    reused now that those are written absolute; another path is still another run."""
    from polyvis.paths import cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYVIS_CACHE", "cache")
    assert cache_root() == tmp_path / "cache"
    out = tmp_path / "r"
    _finished(out, _with("data", train=["cache/data/qa.jsonl"]))
    check_resumable(out, load_config(_with("data", train=[str(tmp_path / "cache/data/qa.jsonl")])))
    with pytest.raises(ConfigError) as err:
        check_resumable(out, load_config(_with("data", train=[str(tmp_path / "other/qa.jsonl")])))
    assert err.value.field == "data"


def test_the_model_of_init_from_is_not_told_apart_by_path_spelling(tmp_path, monkeypatch):
    """train.init_from's model is used as it is; the config's `model` fields that differ from it
    are listed in a warning. An LM path written relative in one and absolute in the other is the
    same place, not a difference; another folder is."""
    from polyvis.train.run_dir import model_of_init

    monkeypatch.chdir(tmp_path)
    init = tmp_path / "init"
    init.mkdir()
    model = {k: v for k, v in TINY["model"].items() if k != "llm"}
    dump_config(load_config({**CFG, "model": {**model, "llm": {"path": str(tmp_path / "lm")}}}),
                init / "polyvis.yaml")  # fmt: skip
    relative = load_config({**CFG, "model": {**model, "llm": {"path": "lm"}}})
    assert model_of_init(relative, init)[1] == []
    elsewhere = load_config({**CFG, "model": {**model, "llm": {"path": "other/lm"}}})
    cfg, differ = model_of_init(elsewhere, init)
    assert differ == ["llm"] and cfg.model.llm.path == str(tmp_path / "lm")
