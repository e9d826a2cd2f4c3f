"""`model.adapter.init_from`: a pretrained projector as the adapter's starting weights, whole or on
one encoder's channels; errors that name the field; saved models that load without the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.models.build import build_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
CLIP_WIDTH = 64  # nano-tiny: clip's one layer of 64 channels comes first
LM_WIDTH = 64


def built(adapter: str, *extra: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_config(NANO_TINY, [f"model.adapter={adapter}", *extra]))[0]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def dino_width() -> int:
    return built("{type: linear}").adapter.proj.in_features - CLIP_WIDTH


def test_exact_keys_set_every_adapter_weight(tmp_path):
    plain = built("{type: mlp, depth: 2}")
    weights = {k: torch.randn_like(v) for k, v in plain.adapter.state_dict().items()}
    assert set(weights) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    save_file(weights, tmp_path / "p.safetensors")
    model = built(f"{{type: mlp, depth: 2, init_from: {tmp_path / 'p.safetensors'}}}")
    got = model.adapter.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    # everything else is what the same seed builds without the file
    ours, ref = state(model), state(plain)
    rest = [k for k in ref if not k.startswith("adapter.")]
    assert all(torch.equal(ours[k], ref[k]) for k in rest)


def test_llava_projector_keys_fit_in_order(tmp_path):
    shapes = {k: v.shape for k, v in built("{type: mlp}").adapter.state_dict().items()}
    # LLaVA's mm_projector as saved by its first stage: a prefix and nn.Sequential indices
    weights = {
        f"model.mm_projector.{k.removeprefix('mlp.')}": torch.randn(s) for k, s in shapes.items()
    }
    save_file(weights, tmp_path / "mm_projector.safetensors")
    model = built(f"{{type: mlp, init_from: {tmp_path / 'mm_projector.safetensors'}}}")
    got = model.adapter.state_dict()
    for key in shapes:
        assert torch.equal(got[key], weights[f"model.mm_projector.{key.removeprefix('mlp.')}"])


def test_encoder_slice_reproduces_the_projector_start(tmp_path, dino_width):
    proj = {"0.weight": torch.randn(LM_WIDTH, dino_width), "0.bias": torch.randn(LM_WIDTH)}
    path = tmp_path / "projector.safetensors"
    save_file(proj, path)
    model = built(f"{{type: linear, init_from: {path}, init_encoder: dino}}", seed=3)
    # the reference: the same seed, the same build, then the projector poked in by hand
    ref = built("{type: linear}", seed=3)
    with torch.no_grad():
        ref.adapter.proj.weight.zero_()
        ref.adapter.proj.weight[:, CLIP_WIDTH:] = proj["0.weight"]
        ref.adapter.proj.bias.copy_(proj["0.bias"])
    ours, theirs = state(model), state(ref)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    feats = torch.randn(2, 5, CLIP_WIDTH + dino_width)
    with torch.no_grad():
        out = model.adapter(feats)
    expected = feats[..., CLIP_WIDTH:] @ proj["0.weight"].T + proj["0.bias"]
    torch.testing.assert_close(out, expected)


def test_a_projector_on_the_first_encoder(tmp_path, dino_width):
    proj = {"proj.weight": torch.randn(LM_WIDTH, CLIP_WIDTH), "proj.bias": torch.randn(LM_WIDTH)}
    save_file(proj, tmp_path / "p.safetensors")
    model = built(f"{{type: linear, init_from: {tmp_path / 'p.safetensors'}, init_encoder: clip}}")
    weight = model.adapter.proj.weight
    assert torch.equal(weight[:, :CLIP_WIDTH], proj["proj.weight"])
    assert torch.equal(weight[:, CLIP_WIDTH:], torch.zeros(LM_WIDTH, dino_width))
    assert torch.equal(model.adapter.proj.bias, proj["proj.bias"])


def test_shapes_that_do_not_fit_say_expected_and_got(tmp_path, dino_width):
    path = tmp_path / "p.safetensors"
    save_file({"0.weight": torch.zeros(LM_WIDTH, 10), "0.bias": torch.zeros(LM_WIDTH)}, path)
    with pytest.raises(ConfigError) as err:
        built(f"{{type: linear, init_from: {path}, init_encoder: dino}}")
    assert err.value.field == "model.adapter.init_from" and "\n" not in str(err.value)
    assert f"expected proj.weight ({LM_WIDTH}, {dino_width}), proj.bias ({LM_WIDTH},)" in str(
        err.value
    )
    assert f"got 0.bias ({LM_WIDTH},), 0.weight ({LM_WIDTH}, 10)" in str(err.value)
    with pytest.raises(ConfigError, match=r"^model\.adapter\.init_from: .*expected mlp\.0\.weight"):
        built(f"{{type: mlp, init_from: {path}}}")  # 2 tensors for 4 parameters
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"^model\.adapter\.init_from: .*not a safetensors file"):
        built(f"{{type: linear, init_from: {bad}}}")


def test_saved_model_loads_without_the_file(tmp_path, dino_width):
    path = tmp_path / "projector.safetensors"
    save_file(
        {"0.weight": torch.randn(LM_WIDTH, dino_width), "0.bias": torch.randn(LM_WIDTH)}, path
    )
    torch.manual_seed(0)
    cfg = load_config(
        NANO_TINY, [f"model.adapter={{type: linear, init_from: {path}, init_encoder: dino}}"]
    )
    model, processor = build_model(cfg)
    out = save_model(model, processor, tmp_path / "model")
    assert json.loads((out / "config.json").read_text())["adapter"] == {"type": "linear"}
    path.unlink()  # the weights are in the model now
    again, _ = load_model(out)
    ours, theirs = state(model), state(again)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
