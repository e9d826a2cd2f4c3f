"""dino-nano: a tiny one trains on images alone (MAE), saves, loads by path, rebuilds the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from polyvis.errors import ConfigError

TINY = {
    "encoder": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 8},
    "decoder_hidden": 16, "decoder_layers": 1, "decoder_heads": 2, "size": 32, "steps": 12,
    "batch_size": 8, "lr": 3e-3, "eval_samples": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("dino-data")
    generate(["scene"], n=30, seed=0, out=out, image_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def dino(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from polyvis.nano.dino import train_dino

    out = tmp_path_factory.mktemp("dino") / "dino-nano"
    return out, train_dino([data_dir], out, TINY, progress=False)


def test_quick_settings_are_the_tests_tiny_model() -> None:
    from polyvis.nano.dino import QUICK_SETTINGS

    assert QUICK_SETTINGS == TINY


def test_trains_on_images_alone_and_saves_a_dinov2_encoder(dino: tuple[Path, dict]) -> None:
    from transformers import AutoImageProcessor, AutoModel, Dinov2Model

    out, log = dino
    curve = log["loss_curve"]
    assert sum(curve[-4:]) < sum(curve[:4])
    assert log["train_images"] == 24  # one record per scene image of the train split (80 %)
    rec = log["eval"]["reconstruction"]
    assert (
        rec["n"] == 3
        and rec["masked_mse"] < log["eval"]["reconstruction_random_init"]["masked_mse"]
    )
    assert log["grid"] == [4, 4] and log["read_layers"] == [-3, -1]
    assert json.loads((out / "training_log.json").read_text())["loss_curve"] == curve
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, Dinov2Model) and model.config.patch_size == 8
    proc = AutoImageProcessor.from_pretrained(out)
    assert proc.size == {"height": 32, "width": 32} and list(proc.image_mean) == [
        0.485,
        0.456,
        0.406,
    ]


def test_loads_by_path_as_a_polyvis_encoder_and_runs_a_forward(dino: tuple[Path, dict]) -> None:
    from tests.conftest import NANO_TINY
    from transformers import AutoModel

    from polyvis.config import load_config
    from polyvis.models.build import build_model

    out, _ = dino
    cfg = load_config(NANO_TINY, [
        "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, "
        "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, "
        f"patch_size: 8}}, layers: [-2]}}, {{name: dino, path: '{out}', layers: [-3, -1]}}]",
        "model.fusion={type: concat-channel, align: interpolate}",
    ])  # fmt: skip
    torch.manual_seed(0)
    model, processor = build_model(cfg)
    enc = model.encoders[1]
    assert enc.layers == [0, 2] and enc.grid == (4, 4) and enc.num_prefix_tokens == 1
    pv = torch.randn(2, 3, 32, 32)
    ref = AutoModel.from_pretrained(out)(pixel_values=pv, output_hidden_states=True).hidden_states
    with torch.no_grad():
        ours = enc(pv)
    assert all(torch.allclose(o, ref[i][:, 1:], atol=1e-5) for o, i in zip(ours, (0, 2)))
    image = Image.new("RGB", (64, 64), (220, 40, 40))
    batch = processor("<image>\nWhat colour is it?", images=[image])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_a_rebuild_is_byte_identical(
    dino: tuple[Path, dict], data_dir: Path, tmp_path: Path
) -> None:
    from polyvis.nano.dino import train_dino

    log = train_dino([data_dir], tmp_path / "again", TINY, progress=False)
    assert log["loss_curve"] == dino[1]["loss_curve"]
    again = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert again == (dino[0] / "model.safetensors").read_bytes()


def test_masking_and_patches() -> None:
    from polyvis.nano.dino_model import patchify, random_keep

    px = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(px, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right 4 x 4 block, pixels row by row, channels last
    assert torch.equal(patches[1, 1], px[1, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    keep, mask = random_keep(3, 256, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (3, 64) and mask.sum().item() == 3 * 192
    assert all(mask[i, keep[i]].sum() == 0 and len(set(keep[i].tolist())) == 64 for i in range(3))


def test_settings_errors_name_the_field(data_dir: Path, tmp_path: Path) -> None:
    from polyvis.nano.dino import train_dino

    with pytest.raises(ConfigError, match=r"^mask_ratio: "):
        train_dino([data_dir], tmp_path / "x", {**TINY, "mask_ratio": 1.0})
    with pytest.raises(ConfigError, match=r"^stepz: unknown field"):
        train_dino([data_dir], tmp_path / "x", {**TINY, "stepz": 3})
    with pytest.raises(ConfigError, match=r"patch_size must be an int that divides size 30"):
        train_dino([data_dir], tmp_path / "x", {**TINY, "size": 30})
