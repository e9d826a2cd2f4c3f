"""Nano runs: typed stage configs built once, the stages a run still needs, the worker's calls
(the same evaluation as `polyvis eval`), a failed run's error, and the demo's starts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from _inline_runs import use_launcher
from polyvis.config import load_config
from polyvis.errors import ConfigError, PolyVisError
from polyvis.nano import runs
from polyvis.nano.runs import (
    Finished,
    RunSpec,
    pending_stages,
    stage_configs,
    train_runs,
    train_seconds,
)
from polyvis.nano.worker import EvalStage, FlopsStage, TrainStage, run_stages
from polyvis.nano.world import align_stage, nano_config, projector_init

ROOT = Path(__file__).resolve().parents[1]
TINY = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(mode="json", exclude_none=True)
CFG = {
    "model": TINY["model"],
    "data": {"train": ["qa.jsonl"], "max_length": 256},
    "train": {"stage": "finetune", "max_steps": 70, "lr": 2e-3, "lr_llm": 5e-4, "seed": 3},
}


def test_a_run_without_align_is_one_typed_train_stage_then_its_evaluation(tmp_path: Path):
    out = tmp_path / "r"
    spec = RunSpec.build("r", CFG, out, [tmp_path / "t.jsonl"], eval_limit=5)
    assert spec.config == load_config(CFG) and spec.align is None
    train, ev = pending_stages(spec)
    assert train == TrainStage(spec.config, out)
    assert ev == EvalStage(out / "final", [tmp_path / "t.jsonl"], out / "eval", "r", 32, 48, 5)
    assert pending_stages(spec, evaluate=False) == [train]
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "results.json").write_text("{}")
    (out / "done.json").write_text('{"seconds": 1.5}')
    assert pending_stages(spec) == [] and train_seconds(spec) == 1.5


def test_a_run_trained_from_the_feature_cache_is_scored_from_it(tmp_path: Path):
    cached = {**CFG, "train": {**CFG["train"], "cache_features": True}}
    spec = RunSpec.build("r", cached, tmp_path / "r", [tmp_path / "t.jsonl"])
    assert pending_stages(spec)[-1].feature_cache is True
    plain = RunSpec.build("r", CFG, tmp_path / "p", [tmp_path / "t.jsonl"])
    assert pending_stages(plain)[-1].feature_cache is False


def test_align_stage_trains_first_and_the_run_starts_from_it(tmp_path: Path, monkeypatch):
    out = tmp_path / "r"
    stage = {"train": {"max_steps": 30}, "data": {"train": ["captions.jsonl"]}}
    main, first = stage_configs(CFG, out, stage)
    # its own data, the rest of the data section kept; the run itself keeps its data
    assert first["data"] == {"train": ["captions.jsonl"], "max_length": 256}
    assert main["data"] == CFG["data"] and first["model"] == CFG["model"]
    # a section the run's config lacks is still the align stage's
    bare = {k: v for k, v in CFG.items() if k != "data"}
    assert stage_configs(bare, out, stage)[1]["data"] == {"train": ["captions.jsonl"]}
    # the align stage: LLM frozen, the run's own lr and seed, its own steps, no LLM rate
    align = first["train"]
    assert align["stage"] == "align" and align["max_steps"] == 30 and "lr_llm" not in align
    assert align["lr"] == 2e-3 and align["seed"] == 3 and "init_from" not in align
    assert main["train"] == {**CFG["train"], "init_from": str(out / "align")}
    assert CFG["train"].get("init_from") is None  # the run's own config is not changed
    # a grid's --out given relative: the run's config.yaml still trains from another folder
    monkeypatch.chdir(tmp_path)
    relative, _ = stage_configs(CFG, Path("grid") / "r", stage)
    assert relative["train"]["init_from"] == str(tmp_path / "grid" / "r" / "align")
    # typed once, in the parent; both stages then train in order, the evaluation last
    spec = RunSpec.build("r", CFG, out, [tmp_path / "t.jsonl"], align=stage)
    assert spec.align == load_config(first) and spec.config == load_config(main)
    a, b, ev = pending_stages(spec)
    assert (a.out, a.config, b.out, b.config) == (out / "align", spec.align, out, spec.config)
    assert isinstance(ev, EvalStage)
    # a finished align stage is not trained again; seconds count both stages
    (out / "align").mkdir(parents=True)
    (out / "align" / "done.json").write_text('{"seconds": 2.5}')
    assert pending_stages(spec, evaluate=False) == [b]
    (out / "done.json").write_text('{"seconds": 4.0}')
    assert pending_stages(spec, evaluate=False) == [] and train_seconds(spec) == 6.5
    # an error in the align sections alone names them
    with pytest.raises(ConfigError) as err:
        RunSpec.build("r", CFG, out, [], align={"train": {"max_stepz": 3}})
    assert err.value.field == "align.train.max_stepz" and str(err.value).count(":") == 1


def test_demo_budget_align_steps_are_part_of_the_steps():
    assert align_stage({"steps": 100}) is None
    assert align_stage({"steps": 100, "align_steps": 30}) == {
        "train": {"max_steps": 30, "warmup_steps": 1, "save_every": 15}
    }
    with pytest.raises(ConfigError, match="budget.align_steps"):
        align_stage({"steps": 100, "align_steps": 100})


def test_the_worker_evaluates_as_polyvis_eval_does(tmp_path: Path, monkeypatch):
    """One route to evaluation, with the arguments the `polyvis eval` command line gave it."""
    import polyvis.eval.runner as runner
    import polyvis.models.build as build
    from polyvis.cli import main

    calls = []

    class Stop(PolyVisError):
        pass

    def fake_load(*args, **kwargs):
        calls.append(("load", args, kwargs))
        return "MODEL", "PROCESSOR"

    def fake_evaluate(*args, **kwargs):
        calls.append(("evaluate", args, kwargs))
        raise Stop("recorded")

    monkeypatch.setattr(build, "load_model", fake_load)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr(runner, "load_items", lambda *a, **k: [])
    out, files = tmp_path / "r", [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for f in files:  # the command reads its records files before it loads the model
        rec = {"id": f.stem, "conversations": [{"from": "human", "value": "hi"},
                                               {"from": "gpt", "value": "yes"}]}  # fmt: skip
        f.write_text(json.dumps(rec) + "\n")
    spec = RunSpec.build("clip | add", CFG, out, files, eval_limit=7)
    (ev,) = pending_stages(spec)[1:]
    assert run_stages([ev]) == 2
    # the command runs.py launched before the worker called evaluate itself
    cli = [
        "eval", str(out / "final"), "--data", *map(str, files), "--out", str(out / "eval"),
        "--batch-size", "32", "--max-new-tokens", "48", "--name", "clip | add", "--device",
        "cpu", "--no-progress", "--limit", "7",
    ]  # fmt: skip
    assert main(cli) == 2
    assert len(calls) == 4 and calls[:2] == calls[2:]
    assert calls[1][2]["model_dir"] == str(out / "final") and calls[1][2]["limit"] == 7


def test_runs_start_longest_first_and_equal_ones_keep_their_order(tmp_path: Path):
    def spec(name, length, steps, align_steps=None, done=False):
        cfg = copy.deepcopy(CFG)
        cfg["data"]["max_length"], cfg["train"]["max_steps"] = length, steps
        align = None if align_steps is None else {"train": {"max_steps": align_steps}}
        s = RunSpec.build(name, cfg, tmp_path / name, [tmp_path / "t.jsonl"], align=align)
        if done:  # trained: only its scoring is left
            s.out.mkdir(parents=True)
            (s.out / "done.json").write_text("{}")
        return s, pending_stages(s)

    short = spec("short", 256, 100)
    long = spec("long", 448, 100)  # more image tokens: the dino cell
    aligned = spec("aligned", 256, 100, align_steps=100)  # its align stage's steps count too
    twin = spec("twin", 256, 100)
    scored = spec("scored", 448, 100, done=True)  # no steps left: after every training run
    order = runs.launch_order([short, scored, twin, aligned, long])
    assert [s.name for s, _ in order] == ["aligned", "long", "short", "twin", "scored"]
    # scoring only: the longer sequences first
    small = spec("small", 256, 100, done=True)
    assert [s.name for s, _ in runs.launch_order([small, scored])] == ["scored", "small"]


def test_a_failed_run_names_itself_and_stops_the_others(tmp_path: Path, monkeypatch):
    procs = []
    launch = runs.RunServer.launch  # forked runs; their own processes fail the same way

    def tracked(self, *args):
        procs.append(launch(self, *args))
        return procs[-1]

    monkeypatch.setattr(runs.RunServer, "launch", tracked)
    missing = {**CFG, "train": {**CFG["train"], "init_from": str(tmp_path / "none")}}
    bad = RunSpec.build("bad", missing, tmp_path / "bad", [])
    Image.new("RGB", (32, 32), "white").save(tmp_path / "white.png")
    qa = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "white"}]
    records = tmp_path / "qa.jsonl"
    records.write_text(json.dumps({"id": "0", "image": "white.png", "conversations": qa}))
    endless = copy.deepcopy(CFG)
    endless["data"]["train"] = [str(records)]
    endless["train"]["max_steps"] = 10**9
    long = RunSpec.build("long", endless, tmp_path / "long", [])
    done = []
    with pytest.raises(PolyVisError) as err:
        train_runs([bad, long], jobs=2, on_done=lambda f: done.append(f.spec.name), fork=True)
    msg = str(err.value)
    assert msg.startswith(f"run bad failed (see {tmp_path / 'bad' / 'train.log'}): ")
    assert msg.endswith(f"polyvis: error: train.init_from: {tmp_path / 'none'} is neither a model "
                        "directory nor a finished run")  # fmt: skip
    assert "\n" not in msg
    assert len(procs) == 2 and all(p.poll() is not None for p in procs) and done == []
    assert not (tmp_path / "long" / "done.json").exists()


def test_each_finished_run_reports_its_place_and_the_time_left_at_this_pace(
    tmp_path: Path, monkeypatch
):
    import subprocess
    import sys

    def quick(spec, stages, threads):  # a run that ends at once, in place of a worker
        return subprocess.Popen([sys.executable, "-c", "pass"]), (spec.out / "train.log").open("a")

    use_launcher(monkeypatch, quick)
    specs = [RunSpec.build(f"r{i}", CFG, tmp_path / f"r{i}", []) for i in range(3)]
    finished: list[Finished] = []
    train_runs(specs, jobs=2, on_done=finished.append)
    assert [f.done for f in finished] == [1, 2, 3] and {f.total for f in finished} == {3}
    assert sorted(f.spec.name for f in finished) == ["r0", "r1", "r2"]
    assert all(0 <= f.seconds <= f.elapsed for f in finished)
    # the line: the run, its time, its place and the rest at the pace so far
    spec = specs[0]
    assert Finished(spec, 311.4, 6, 48, 1800.0).line() == (
        "  r0: done in 311 s [6/48, about 3 h 30 min left at this pace]"
    )
    assert Finished(spec, 50.0, 3, 4, 100.0).line() == (
        "  r0: done in 50 s [3/4, about 0 min 33 s left at this pace]"
    )
    assert Finished(spec, 50.0, 4, 4, 100.0).line() == "  r0: done in 50 s [4/4]"


def test_demo_runs_start_from_the_experts_projector_and_scale_mixed_encoders(tmp_path: Path):
    vary, clip = tmp_path / "vary-nano", tmp_path / "clip-nano"
    (vary / "decoder").mkdir(parents=True)
    (vary / "decoder" / "projector.safetensors").write_bytes(b"")
    encoders = {
        "clip": {"name": "clip", "path": str(clip), "layers": [-2]},
        "vary": {"name": "vary", "path": str(vary), "layers": [-1]},
    }

    def cfg(names, fusion="concat-channel", adapter=None, llm=None):
        return {
            "model": {
                "encoders": [encoders[n] for n in names],
                "fusion": {"type": fusion},
                "adapter": adapter or {"type": "linear"},
                "llm": llm or {"path": str(vary / "decoder")},
            }
        }

    init = {"init_from": str(vary / "decoder" / "projector.safetensors"), "init_encoder": "vary"}
    budget = {"balance_images": 64}
    mixed = cfg(["clip", "vary"])
    out = nano_config(mixed, budget)
    assert out["model"]["adapter"] == {"type": "linear", **init}
    assert out["model"]["fusion"] == {
        "type": "concat-channel",
        "scales": "auto",
        "scale_images": 64,
    }
    assert mixed == cfg(["clip", "vary"])  # a copy
    alone = nano_config(cfg(["vary"]), budget)["model"]
    assert alone["adapter"] == {"type": "linear", **init} and "scales" not in alone["fusion"]
    # no projector start: another fusion, adapter or LM; no scales: one encoder, other fusions,
    # given scales, or no images to measure on
    for other in (
        cfg(["clip", "vary"], fusion="omnifusion"),
        cfg(["clip"]),
        cfg(["clip", "vary"], adapter={"type": "mlp"}),
        cfg(["clip", "vary"], adapter={"type": "linear", "bias": False}),
        cfg(["clip", "vary"], llm={"path": str(tmp_path / "elsewhere")}),
    ):
        assert projector_init(other) is None
    assert nano_config(cfg(["clip", "vary"], fusion="omnifusion"), budget)["model"]["fusion"] == {
        "type": "omnifusion"
    }
    assert "scales" not in nano_config(mixed, {"balance_images": 0})["model"]["fusion"]
    given = cfg(["clip", "vary"])
    given["model"]["fusion"]["scales"] = [0.5, 1.0]
    assert nano_config(given, budget)["model"]["fusion"]["scales"] == [0.5, 1.0]
    # the typed config accepts them, in the run and in its align stage
    spec = RunSpec.build("r", out, tmp_path / "r", [], align={"train": {"max_steps": 2}})
    for stage in (spec.align, spec.config):
        assert stage.model.adapter == {"type": "linear", **init}
        assert stage.model.fusion["scales"] == "auto"


def test_a_run_scored_on_val_then_a_flops_stage_once_it_is_trained(tmp_path: Path):
    out = tmp_path / "r"
    spec = RunSpec.build("r", CFG, out, [tmp_path / "v.jsonl"], eval_limit=5, eval_dir="val")
    assert spec.results_path == out / "val" / "results.json"
    train, ev = pending_stages(spec)
    assert ev == EvalStage(out / "final", [tmp_path / "v.jsonl"], out / "val", "r", 32, 48, 5)
    flops = FlopsStage(out / "final", spec.config, tmp_path / "flops.json")
    spec.after.append(flops)
    assert pending_stages(spec) == [train, ev, flops]
    (out / "val").mkdir(parents=True)
    (out / "val" / "results.json").write_text("{}")
    (out / "done.json").write_text('{"seconds": 1.0}')
    assert pending_stages(spec) == [flops]  # trained and scored: only the measurement is left
    (tmp_path / "flops.json").write_text('{"flops_per_step": 1}')
    assert pending_stages(spec) == []
    # the same run scored on another set: only that evaluation
    test = RunSpec.build("r", CFG, out, [tmp_path / "t.jsonl"], eval_dir="test")
    (stage,) = pending_stages(test)
    assert stage.out == out / "test" and stage.files == [tmp_path / "t.jsonl"]


def test_flops_per_step_are_counted_on_the_runs_first_batch(tiny_model_dir: Path, tmp_path: Path):
    """One batch of identical records: twice the batch is exactly twice the FLOPs."""
    from polyvis.nano.flops import step_flops

    Image.new("RGB", (32, 32), "white").save(tmp_path / "white.png")
    qa = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "white"}]
    rows = [{"id": str(i), "image": "white.png", "conversations": qa} for i in range(4)]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = copy.deepcopy(CFG)
    cfg["data"]["train"] = [str(tmp_path / "qa.jsonl")]
    counts = {}
    for batch in (2, 4):
        cfg["train"]["batch_size"] = batch
        counts[batch] = step_flops(tiny_model_dir, load_config(cfg))
    assert counts[2] > 10**6 and counts[4] == 2 * counts[2]
