"""benchmarks/gpu_train.py: refuses to run without a GPU, and its tiny dry run works on a CPU."""

from __future__ import annotations

import pytest
import torch
from tests._bench import load_benchmark


@pytest.fixture(scope="module")
def gpu_train():
    return load_benchmark("gpu_train")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_exits_clearly_without_a_gpu(gpu_train, capsys):
    assert gpu_train.main(["--tiny"]) == 2
    assert "no CUDA GPU found" in capsys.readouterr().err


def test_full_size_config_has_the_real_shapes(gpu_train):
    from polyvis.config import load_config

    cfg = load_config(gpu_train.polyvis_config(tiny=False))
    clip, dino = cfg.model.encoders
    assert (clip.config["hidden_size"], clip.config["image_size"], clip.config["patch_size"]) == (
        1024,
        336,
        14,
    )
    assert dino.image_size == 336 and dino.config["num_hidden_layers"] == 24
    assert (
        cfg.model.llm.config["hidden_size"] == 896
        and cfg.model.llm.config["num_hidden_layers"] == 24
    )


def test_tiny_dry_run_builds_and_steps_on_cpu(gpu_train, capsys):
    args = [
        "--dry-run",
        "--tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "2",
        "--text-tokens",
        "8",
    ]
    assert gpu_train.main(args) == 0
    out = capsys.readouterr().out
    assert "cpu (dry run), tiny shapes" in out and "| step (ms) |" in out
    assert "# attention: clip sdpa, dinov2 sdpa, llm sdpa" in out
    model, _ = gpu_train.build(tiny=True, stage="align", precision="autocast")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "adapter", "image_boundary_embeds"}  # align: projector only
    batch = gpu_train.make_batch(model, 2, 8, "cpu")
    assert (
        int((batch["input_ids"] == model.config.image_token_id).sum()) == 2 * model.image_seq_length
    )
    assert torch.isfinite(model(**batch).loss)


def test_attention_is_sdpa_without_flash_attn_and_each_model_is_set(gpu_train, monkeypatch):
    monkeypatch.setattr(gpu_train.importlib.util, "find_spec", lambda name: None)
    assert gpu_train.pick_attention("auto", cuda=True) == "sdpa"
    monkeypatch.setattr(gpu_train.importlib.util, "find_spec", lambda name: object())
    assert gpu_train.pick_attention("auto", cuda=True) == "flash_attention_2"
    assert gpu_train.pick_attention("auto", cuda=False) == "sdpa"  # the CPU dry run
    assert gpu_train.pick_attention("eager", cuda=True) == "eager"
    model, _ = gpu_train.build(tiny=True, stage="finetune", precision="autocast")
    assert gpu_train.set_attention(model, "eager") == {
        "clip": "eager",
        "dinov2": "eager",
        "llm": "eager",
    }
    assert model.language_model.model.config._attn_implementation == "eager"
    assert model.encoders[1].backbone.config._attn_implementation == "eager"
