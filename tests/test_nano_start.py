"""A run that starts from an expert's projector: the adapter's columns, the stage chain, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polyvis.errors import ConfigError
from polyvis.models.build import load_model
from polyvis.nano.runs import RunSpec, stage_configs
from polyvis.nano.start import expert_start, projector_start
from polyvis.nano.vary import PROJECTOR_FILE

CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
DOC = {"model_type": "vit", "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
LM = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
      "tie_word_embeddings": True}  # fmt: skip


@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> Path:
    """An encoder directory with its decoder (the LM) and the projector between them."""
    from transformers import (
        AutoModelForCausalLM,
        Qwen2Config,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from polyvis.models.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("expert")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**{k: v for k, v in DOC.items() if k != "model_type"})).save_pretrained(root)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    tok = train_bpe_tokenizer(vocab_size=300)
    lm = {k: v for k, v in LM.items() if k != "model_type"}
    decoder = AutoModelForCausalLM.from_config(Qwen2Config(**lm, vocab_size=len(tok)))
    decoder.save_pretrained(root / "decoder")
    tok.save_pretrained(root / "decoder")
    proj = {"0.weight": torch.randn(64, 48), "0.bias": torch.randn(64)}
    save_file(proj, root / "decoder" / PROJECTOR_FILE)
    return root


def config(expert: Path, adapter: dict | None = None) -> dict:
    return {
        "model": {
            "encoders": [
                {"name": "clip", "config": CLIP, "layers": [-2]},
                {"name": "doc", "path": str(expert), "layers": [-1]},
            ],
            "fusion": {"type": "concat-channel"},
            "adapter": adapter or {"type": "linear"},
            "llm": {"path": str(expert / "decoder")},
        },
        "train": {"stage": "finetune", "max_steps": 5},
    }


def test_adapter_starts_as_the_projector_on_the_experts_channels(expert: Path, tmp_path: Path):
    cfg = config(expert)
    start = expert_start(cfg)
    assert start == {"encoder": "doc", "projector": str(expert / "decoder" / PROJECTOR_FILE)}
    out = projector_start(cfg, start["encoder"], start["projector"], tmp_path / "start")
    model, _ = load_model(out)  # saved and loaded back by path
    weight, bias = model.adapter.proj.weight, model.adapter.proj.bias
    proj = load_file(start["projector"])
    assert weight.shape == (64, 32 + 48)
    assert torch.equal(weight[:, :32], torch.zeros(64, 32))  # clip's columns start closed
    assert torch.equal(weight[:, 32:], proj["0.weight"]) and torch.equal(bias, proj["0.bias"])
    # so the image tokens are exactly the expert's projected tokens
    feats = torch.randn(2, 16, 80)
    assert torch.allclose(model.adapter(feats), feats[..., 32:] @ proj["0.weight"].T + bias)
    # built again, the start is the same model (the run's seed), so a demo is repeatable
    again, _ = load_model(projector_start(cfg, "doc", start["projector"], tmp_path / "again"))
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_no_start_without_a_linear_adapter_or_a_projector(expert: Path, tmp_path: Path):
    assert expert_start(config(expert, {"type": "mlp"})) is None
    other = config(expert)
    other["model"]["llm"] = {"config": LM}
    assert expert_start(other) is None
    with pytest.raises(ConfigError) as err:
        projector_start(config(expert, {"type": "mlp"}), "doc", "p", tmp_path / "s")
    assert err.value.field == "model.adapter"
    with pytest.raises(ConfigError) as err:
        projector_start(config(expert), "nope", "p", tmp_path / "s")
    assert err.value.field == "model.encoders" and "nope" in str(err.value)
    with pytest.raises(ConfigError) as err:
        projector_start(config(expert), "doc", tmp_path / "none.safetensors", tmp_path / "s")
    assert err.value.field == "start.projector" and "not found" in str(err.value)
    bad = tmp_path / "bad.safetensors"
    save_file({"0.weight": torch.zeros(64, 32), "0.bias": torch.zeros(64)}, bad)
    with pytest.raises(ConfigError) as err:
        projector_start(config(expert), "doc", bad, tmp_path / "s")
    assert err.value.field == "start.projector" and "(64, 48)" in str(err.value)


def test_the_first_stage_starts_from_the_start_model(tmp_path: Path):
    cfg = {"model": {}, "train": {"stage": "finetune", "max_steps": 5}}
    start = {"encoder": "doc", "projector": "p"}
    plain = stage_configs(RunSpec("r", cfg, tmp_path / "r", [], start=start))
    assert plain["run-config.yaml"]["train"]["init_from"] == str(tmp_path / "r" / "start")
    aligned = stage_configs(
        RunSpec("r", cfg, tmp_path / "r", [], align={"train": {"max_steps": 2}}, start=start)
    )
    assert aligned["align-config.yaml"]["train"]["init_from"] == str(tmp_path / "r" / "start")
    assert aligned["run-config.yaml"]["train"]["init_from"] == str(tmp_path / "r" / "align")
    assert "init_from" not in cfg["train"]  # the spec's own config is not changed
