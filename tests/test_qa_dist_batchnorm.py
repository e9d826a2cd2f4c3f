"""A trained BatchNorm encoder (train.unfreeze_encoders on a ResNet) on two DDP processes: each
process sees half the batch, so its BatchNorm must normalise by the global batch's statistics
and move its running ones by them, or two processes train another model than one. The same run
checks the val loss: 7 val records in batches of 4, where accelerate repeats a record to fill
the last batch, which two processes used to count twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from _launch import launch
from polyvis.config import load_config
from polyvis.train import train

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    from polyvis.data.synthetic import generate

    root = tmp_path_factory.mktemp("bn")
    torch.manual_seed(0)
    resnet = T.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")  # fmt: skip
    T.ResNetModel(resnet).save_pretrained(root / "resnet")
    proc = getattr(T, "ConvNextImageProcessorPil", None) or T.ConvNextImageProcessor
    proc(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(root / "resnet")
    generate(["scene"], 16, 0, root / "synth", image_size=32, progress=False)
    sets = [
        f"model.encoders=[{{name: resnet, path: {root / 'resnet'}, layers: [-1]}}]",
        f"data.synthetic={{families: [scene], n: 16, seed: 0, size: 32, dir: {root / 'synth'}}}",
        "train.stage=finetune", "train.unfreeze_encoders=true", "train.batch_size=4",
        "train.max_steps=3", "train.lr=1e-2",
    ]  # fmt: skip
    return root, sets


def _losses(run: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def test_trained_batchnorm_on_two_processes_matches_one(setup):
    root, sets = setup
    one = root / "one"
    sets = [*sets, "train.eval_every=3"]
    train(load_config(CFG, sets), one, progress=False)
    two = root / "two"
    command = ["-m", "polyvis", "train", str(CFG), "--out", str(two), "--no-progress"]
    launch(ROOT / "configs" / "accelerate" / "cpu-ddp.yaml", [*command, "--set", *sets], two)
    torch.testing.assert_close(
        torch.tensor(_losses(two)), torch.tensor(_losses(one)), atol=1e-5, rtol=1e-5
    )
    val = [_losses(run, "val_loss") for run in (one, two)]
    assert len(val[0]) == 1 and abs(val[1][0] - val[0][0]) < 1e-5, val
    a = load_file(str(one / "final" / "model.safetensors"))
    b = load_file(str(two / "final" / "model.safetensors"))
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(k in b for k in stats)
    for key in stats:  # moved by the global batch, as on one process
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    assert int(b[next(k for k in a if k.endswith("num_batches_tracked"))]) == 3


def test_resume_keeps_the_running_statistics_of_a_trained_batchnorm(setup, tmp_path):
    """They are buffers, not parameters: a checkpoint of trainable parameters alone lost them."""
    import shutil

    _, sets = setup
    sets = [*sets, "train.max_steps=4", "train.save_every=2"]
    run = tmp_path / "run"
    train(load_config(CFG, sets), run, progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "done.json").unlink()  # as if killed after the step-2 checkpoint
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step-2"]
    train(load_config(CFG, sets), resumed, progress=False)
    a = load_file(str(run / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
