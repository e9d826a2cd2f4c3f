"""Training: loss falls, exact resume after SIGKILL, DDP on two CPU processes, LoRA, NaN stop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _launch import launch
from polyvis.cli import main
from polyvis.config import load_config
from polyvis.errors import ConfigError, DataError
from polyvis.train import train
from polyvis.train.loop import TrainingError

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(["scene", "ocr"], 24, 0, out, image_size=64, progress=False)
    return out


def overrides(synth_dir: Path, *extra: str) -> list[str]:
    return [
        "train.stage=finetune",
        "train.batch_size=4",
        f"data.synthetic={{families: [scene, ocr], n: 24, seed: 0, size: 64, dir: {synth_dir}}}",
        *extra,
    ]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_run_layout(tmp_path, synth_dir):
    run = tmp_path / "run"
    cfg = load_config(
        CFG, overrides(synth_dir, "train.max_steps=25", "train.lr=3e-3", "train.save_every=10")
    )
    final = train(cfg, run, progress=False)
    ls = losses(run)
    assert len(ls) == 25
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.3, ls
    assert (run / "config.yaml").is_file() and (final / "model.safetensors").is_file()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-10", "step-20"]
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))


def test_bf16_on_cpu_learns_with_fp32_attention_and_saves_plain_sdpa(tmp_path, synth_dir):
    """train.mixed_precision bf16 on CPU: the loss falls as in float32, and the fp32-attention
    switch (polyvis.models.attention) is not saved with the model."""
    from polyvis.models.attention import FP32_SDPA
    from polyvis.models.build import load_model

    sets = ["train.max_steps=25", "train.lr=3e-3", "train.mixed_precision=bf16"]
    final = train(load_config(CFG, overrides(synth_dir, *sets)), tmp_path / "run", progress=False)
    ls = losses(tmp_path / "run")
    assert all(math.isfinite(x) for x in ls)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.3, ls
    assert FP32_SDPA not in (final / "config.json").read_text()
    model, _ = load_model(final)
    assert model.language_model.config._attn_implementation == "sdpa"


def test_gradient_accumulation_equals_big_batch(tmp_path, synth_dir):
    runs = {}
    for name, extra in {
        "big": ["train.batch_size=4"],
        "accum": ["train.batch_size=2", "train.grad_accum=2"],
    }.items():
        cfg = load_config(CFG, overrides(synth_dir, "train.max_steps=3", *extra))
        runs[name] = load_file(
            str(train(cfg, tmp_path / name, progress=False) / "model.safetensors")
        )
    for key, value in runs["big"].items():
        torch.testing.assert_close(runs["accum"][key], value, atol=2e-5, rtol=1e-4)


def test_a_dataloader_worker_gives_the_same_run_across_epochs(tmp_path, synth_dir):
    # ocr alone: ~19 training records, 5 batches of 4 an epoch, so 12 steps cross two epochs
    # (the persistent worker must follow the sampler's new order every epoch)
    ocr = f"data.synthetic={{families: [ocr], n: 24, seed: 0, size: 64, dir: {synth_dir}}}"
    runs = {}
    for workers in (0, 1):
        cfg = load_config(
            CFG, overrides(synth_dir, "train.max_steps=12", ocr, f"train.num_workers={workers}")
        )
        train(cfg, tmp_path / str(workers), progress=False)
        runs[workers] = losses(tmp_path / str(workers))
    assert len(runs[0]) == 12 and runs[1] == runs[0]


def _cli(run: Path, synth_dir: Path, steps: int) -> list[str]:
    sets = overrides(synth_dir, f"train.max_steps={steps}", "train.save_every=4")
    return [
        sys.executable,
        "-m",
        "polyvis",
        "train",
        str(CFG),
        "--out",
        str(run),
        "--no-progress",
        "--set",
        *sets,
    ]


def test_sigkill_then_resume_gives_identical_weights(tmp_path, synth_dir):
    env = dict(os.environ)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref, synth_dir, 12), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _cli(killed, synth_dir, 12), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4" / "state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, (
            "run ended before its first checkpoint"
        )
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    done = subprocess.run(_cli(killed, synth_dir, 12), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    a = load_file(str(ref / "final" / "model.safetensors"))
    b = load_file(str(killed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(ref)[-1] == losses(killed)[-1]


def test_two_process_ddp_matches_one_process(tmp_path, synth_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(one, synth_dir, 4), check=True, env=env, capture_output=True)
    launch(ROOT / "configs" / "accelerate" / "cpu-ddp.yaml", _cli(two, synth_dir, 4)[1:], two)
    assert json.loads((two / "done.json").read_text())["processes"] == 2
    assert json.loads((one / "done.json").read_text())["processes"] == 1
    torch.testing.assert_close(
        torch.tensor(losses(two)), torch.tensor(losses(one)), atol=1e-5, rtol=1e-5
    )


def test_lora_final_and_merge(tmp_path, synth_dir):
    from polyvis.models.build import load_model

    run = tmp_path / "lora"
    cfg = load_config(
        CFG,
        overrides(synth_dir, "train.max_steps=3", "train.lora={r: 4, alpha: 8}", "train.lr=1e-2"),
    )
    final = train(cfg, run, progress=False)
    assert (final / "lora" / "adapter_config.json").is_file()
    model, processor = load_model(final)
    merged_dir = tmp_path / "merged"
    assert main(["merge-lora", str(final), "--out", str(merged_dir)]) == 0
    merged, _ = load_model(merged_dir)
    assert not (merged_dir / "lora").exists()
    ids = processor(["USER: hello\nASSISTANT: "])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, synth_dir, monkeypatch):
    from polyvis.models.modeling import PolyVisForConditionalGeneration

    original = PolyVisForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 6 and self.training:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PolyVisForConditionalGeneration, "forward", poisoned)
    run = tmp_path / "nan"
    cfg = load_config(CFG, overrides(synth_dir, "train.max_steps=10", "train.save_every=4"))
    with pytest.raises(TrainingError, match=r"loss is nan at step 6.*step-4"):
        train(cfg, run, progress=False)
    assert (run / "checkpoints" / "step-4" / "trainable.safetensors").is_file()


def test_resume_refuses_a_different_config(tmp_path, synth_dir):
    run = tmp_path / "r"
    train(load_config(CFG, overrides(synth_dir, "train.max_steps=2")), run, progress=False)
    cfg = load_config(CFG, overrides(synth_dir, "train.max_steps=2", "model.fusion.type=add"))
    with pytest.raises(Exception, match="model: differs"):
        train(cfg, run, progress=False)


def test_a_finished_run_is_not_kept_for_a_config_that_trains_otherwise(tmp_path, synth_dir):
    # it used to answer "already finished" and hand back a model trained at the old rate
    run = tmp_path / "r"
    train(load_config(CFG, overrides(synth_dir, "train.max_steps=2")), run, progress=False)
    again = load_config(CFG, overrides(synth_dir, "train.max_steps=2", "train.save_every=1"))
    assert train(again, run, progress=False) == run / "final"  # how it is kept: same run
    faster = load_config(CFG, overrides(synth_dir, "train.max_steps=2", "train.lr=0.5"))
    with pytest.raises(ConfigError, match=r"^train\.lr: 0\.5 differs from the finished run"):
        train(faster, run, progress=False)


@pytest.mark.timeout(120)
def test_data_without_answer_tokens_stops_with_an_error(tmp_path, synth_dir):
    # no answer fits in 66 tokens, nano-tiny's image block alone: every record is skipped, so
    # no group has an answer token
    cfg = load_config(CFG, overrides(synth_dir, "train.max_steps=3", "data.max_length=66"))
    with pytest.raises(DataError, match=r"^data\.train: a whole epoch .* no answer token"):
        train(cfg, tmp_path / "empty", progress=False)


@pytest.mark.timeout(120)
def test_groups_without_answer_tokens_mid_run_are_passed_over(tmp_path, synth_dir):
    # every other record's answer is pushed past max_length: with batches of one, every other
    # group has no answer token, and the run still takes its steps and ends
    records = []
    source = synth_dir / "ocr" / "train.jsonl"
    for i, line in enumerate(source.read_text().splitlines()[:8]):
        rec = json.loads(line)
        rec["image"] = str(source.parent / rec["image"])
        if i % 2:
            rec["conversations"][0]["value"] += " word" * 400
        records.append(rec)
    data = tmp_path / "half.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    sets = [
        "train.stage=finetune",
        "train.batch_size=1",
        "train.max_steps=6",
        f"data.train=[{data}]",
    ]
    train(load_config(CFG, sets), tmp_path / "half", progress=False)
    assert len(losses(tmp_path / "half")) == 6
    assert json.loads((tmp_path / "half" / "done.json").read_text())["skipped_records"] > 0
