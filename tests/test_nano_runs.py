"""Run plans of the nano world: an align stage before a run, and the demo budget's align steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyvis.errors import ConfigError
from polyvis.nano.demo import align_stage
from polyvis.nano.runs import RunSpec, _stages, stage_configs, train_seconds

CFG = {
    "model": {"encoders": [{"name": "a", "path": "x"}]},
    "data": {"train": ["qa.jsonl"], "max_length": 256},
    "train": {"stage": "finetune", "max_steps": 70, "lr": 2e-3, "lr_llm": 5e-4, "seed": 3},
}


def test_a_run_without_align_is_one_train_command(tmp_path: Path):
    spec = RunSpec("r", CFG, tmp_path / "r", [])
    assert stage_configs(spec) == {"run-config.yaml": CFG}
    (cmd,) = _stages(spec, evaluate=False)
    assert cmd[cmd.index("train") + 1] == str(tmp_path / "r" / "run-config.yaml")


def test_align_stage_trains_first_and_the_run_starts_from_it(tmp_path: Path):
    out = tmp_path / "r"
    stage = {"train": {"max_steps": 30}, "data": {"train": ["captions.jsonl"]}}
    spec = RunSpec("r", CFG, out, [tmp_path / "t.jsonl"], align=stage)
    cfgs = stage_configs(spec)
    align, main = cfgs["align-config.yaml"]["train"], cfgs["run-config.yaml"]["train"]
    # its own data, the rest of the data section kept; the run itself keeps its data
    assert cfgs["align-config.yaml"]["data"] == {"train": ["captions.jsonl"], "max_length": 256}
    assert cfgs["run-config.yaml"]["data"] == CFG["data"]
    assert cfgs["align-config.yaml"]["model"] == CFG["model"]
    # a section the run's config lacks is still the align stage's
    bare = RunSpec("r", {k: v for k, v in CFG.items() if k != "data"}, out, [], align=stage)
    assert stage_configs(bare)["align-config.yaml"]["data"] == {"train": ["captions.jsonl"]}
    # the align stage: LLM frozen, the run's own lr and seed, its own steps, no LLM rate
    assert align["stage"] == "align" and align["max_steps"] == 30 and "lr_llm" not in align
    assert align["lr"] == 2e-3 and align["seed"] == 3 and "init_from" not in align
    assert main == {**CFG["train"], "init_from": str(out / "align")}
    assert CFG["train"].get("init_from") is None  # the spec's own config is not changed
    first, second, ev = _stages(spec, evaluate=True)
    assert first[first.index("--out") + 1] == str(out / "align")
    assert second[second.index("--out") + 1] == str(out) and "eval" in ev
    # a finished align stage is not trained again; seconds count both stages
    (out / "align").mkdir(parents=True)
    (out / "align" / "done.json").write_text('{"seconds": 2.5}')
    assert [c[c.index("--out") + 1] for c in _stages(spec, evaluate=False)] == [str(out)]
    (out / "done.json").write_text('{"seconds": 4.0}')
    assert _stages(spec, evaluate=False) == [] and train_seconds(spec) == 6.5


def test_demo_budget_align_steps_are_part_of_the_steps():
    assert align_stage({"steps": 100}) is None
    assert align_stage({"steps": 100, "align_steps": 30}) == {
        "train": {"max_steps": 30, "warmup_steps": 1, "save_every": 15}
    }
    with pytest.raises(ConfigError, match="budget.align_steps"):
        align_stage({"steps": 100, "align_steps": 100})


def test_a_runs_stages_share_one_process_and_stop_at_the_first_failure(tmp_path: Path, capsys):
    from polyvis.nano.stages import run_stages

    synth = ["data", "synth", "--families", "ocr", "--n", "3", "--no-progress"]
    ok = run_stages(
        [[*synth, "--out", str(tmp_path / "a")], [*synth, "--out", str(tmp_path / "b")]]
    )
    assert ok == 0 and (tmp_path / "a" / "ocr").is_dir() and (tmp_path / "b" / "ocr").is_dir()
    bad = [
        [*synth, "--families", "nope", "--out", str(tmp_path / "c")],
        [*synth, "--out", str(tmp_path / "d")],
    ]
    assert run_stages(bad) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "d").exists()
