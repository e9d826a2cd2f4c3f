"""Vision encoders loaded by path from tiny saved checkpoints: prefix tokens by what each backbone
really has, grids and widths, truncation above the deepest selected layer (with features equal to
the untruncated backbone's), vision-only loading of CLIP / SigLIP checkpoints, image processors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from polyvis.config import EncoderSpec, load_config
from polyvis.models.build import build_encoder, build_model, load_model, save_model
from polyvis.models.encoders import VisionEncoder, find_layer_list

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "vocab_size": 99,
}

# name: (model class, config, expected prefix tokens, expected grid)
BACKBONES = {
    "siglip": (
        SiglipVisionModel,
        SiglipVisionConfig(**TINY, image_size=32, patch_size=8),
        0,
        (4, 4),
    ),
    "clip": (CLIPVisionModel, CLIPVisionConfig(**TINY, image_size=32, patch_size=8), 1, (4, 4)),
    "dinov2": (Dinov2Model, Dinov2Config(**TINY, image_size=28, patch_size=7), 1, (4, 4)),
    "dinov2-reg": (
        Dinov2WithRegistersModel,
        Dinov2WithRegistersConfig(**TINY, image_size=28, patch_size=7, num_register_tokens=3),
        4,
        (4, 4),
    ),
    "vit": (ViTModel, ViTConfig(**TINY, image_size=24, patch_size=8), 1, (3, 3)),
}


def image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(40, 50, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Each backbone saved with save_pretrained (no processor), plus full CLIP / SigLIP models
    (text + vision towers; CLIP with its own image processor). Values: (dir, reference module)."""
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for name, (cls, cfg, _, _) in BACKBONES.items():
        torch.manual_seed(0)
        model = cls(cfg).eval()
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(text_config=TEXT, vision_config={**TINY, "image_size": 32, "patch_size": 8})
    ).eval()
    clip.save_pretrained(root / "clip-full")
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.1, 0.2, 0.3],
    ).save_pretrained(root / "clip-full")
    out["clip-full"] = (root / "clip-full", clip.vision_model)
    siglip = SiglipModel(
        SiglipConfig(text_config=TEXT, vision_config={**TINY, "image_size": 32, "patch_size": 8})
    )
    siglip.save_pretrained(root / "siglip-full")
    out["siglip-full"] = (root / "siglip-full", siglip.eval().vision_model)
    return out


def load(path: Path, layers, **kw):
    backbone, proc, entry = build_encoder(
        EncoderSpec(name="e", path=str(path), layers=layers, **kw), 0, torch.float32
    )
    return VisionEncoder(backbone.eval(), entry), proc, entry


def reference(module, pixels: torch.Tensor, **kw) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return module(pixel_values=pixels, output_hidden_states=True, **kw).hidden_states


@pytest.mark.parametrize("name", list(BACKBONES))
def test_prefix_grid_dim_and_truncation(checkpoints, name):
    _, cfg, prefix, grid = BACKBONES[name]
    path, original = checkpoints[name]
    enc, proc, entry = load(path, [1])
    assert (enc.num_prefix_tokens, enc.grid, enc.dim) == (prefix, grid, 32)
    assert entry["num_prefix_tokens"] == prefix and tuple(entry["grid"]) == grid
    # layers above 1 are gone, so they are never computed
    assert len(find_layer_list(enc.backbone, 1)) == 1
    assert enc.backbone.config.num_hidden_layers == 1
    assert sum(p.numel() for p in enc.parameters()) < sum(p.numel() for p in original.parameters())

    pixels = proc(images=[image(0), image(1)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (cfg.image_size, cfg.image_size)
    with torch.no_grad():
        (feat,) = enc(pixels)
    ref = reference(original, pixels)
    assert len(ref) == 4  # the original still has all 3 layers
    assert feat.shape == (2, grid[0] * grid[1], 32)
    torch.testing.assert_close(feat, ref[1][:, prefix:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("layers", "want"), [("all", [1, 2, 3]), ([-2], [2]), ([0, -1], [0, 3])])
def test_layer_selection_matches_hidden_states(checkpoints, layers, want):
    path, original = checkpoints["dinov2-reg"]
    enc, proc, _ = load(path, layers)
    assert enc.layers == want
    assert len(find_layer_list(enc.backbone, max(want))) == max(want)
    pixels = proc(images=[image(2)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = enc(pixels)
    ref = reference(original, pixels)
    assert len(feats) == len(want)
    for f, i in zip(feats, want):
        torch.testing.assert_close(f, ref[i][:, 4:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "cls"), [("clip-full", CLIPVisionModel), ("siglip-full", SiglipVisionModel)]
)
def test_full_checkpoint_loads_only_the_vision_tower(checkpoints, name, cls):
    path, vision = checkpoints[name]
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        enc, proc, entry = load(path, [-1])
    finally:
        hf_logger.removeHandler(handler)
    # The text half is an expected leftover: no load report listing it as UNEXPECTED.
    assert not [r for r in seen if "UNEXPECTED" in r.getMessage()]
    assert type(enc.backbone) is cls
    assert entry["config"]["model_type"].endswith("_vision_model")
    names = [n for n, _ in enc.backbone.named_parameters()]
    assert names and not [n for n in names if "text" in n or "logit" in n]
    full_sd = vision.state_dict()  # the full model's vision tower
    for key, value in enc.backbone.state_dict().items():
        assert torch.equal(value, full_sd[key.removeprefix("vision_model.")]), key
    pixels = proc(images=[image(3)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        (feat,) = enc(pixels)
    torch.testing.assert_close(
        feat, reference(vision, pixels)[3][:, entry["num_prefix_tokens"] :], atol=1e-6, rtol=0
    )


def test_image_processor_from_checkpoint_dir_when_present(checkpoints):
    _, proc, _ = load(checkpoints["clip-full"][0], [-1])
    assert "CLIPImageProcessor" in type(proc).__name__
    assert list(proc.image_mean) == [0.1, 0.2, 0.3]
    # no processor saved: a plain one at the config's size, with SigLIP's own statistics (0.5,
    # as SiglipImageProcessor scales to [-1, 1])
    _, proc, _ = load(checkpoints["siglip"][0], [-1])
    assert proc.size == {"height": 32, "width": 32} and list(proc.image_mean) == [0.5] * 3
    _, proc, _ = load(checkpoints["dinov2"][0], [-1], image_mean=[0.5, 0.5, 0.5])
    assert proc.size == {"height": 28, "width": 28} and list(proc.image_mean) == [0.5, 0.5, 0.5]
    assert proc.image_std[0] == pytest.approx(0.229)  # ImageNet


@pytest.mark.parametrize(
    ("name", "size", "kw"),
    [("dinov2", 42, {}), ("clip-full", 48, {"interpolate_pos_encoding": True})],
)
def test_image_size_override_interpolates_positions(checkpoints, name, size, kw):
    """DINOv2 always interpolates; CLIP is asked to (interpolate_pos_encoding)."""
    path, original = checkpoints[name]
    enc, proc, entry = load(path, [-1], image_size=size)
    side = size // original.config.patch_size
    assert enc.grid == (side, side) and entry["interpolate_pos_encoding"] == bool(kw)
    pixels = proc(images=[image(4)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (size, size)
    with torch.no_grad():
        (feat,) = enc(pixels)
    torch.testing.assert_close(
        feat, reference(original, pixels, **kw)[3][:, 1:], atol=1e-6, rtol=1e-6
    )


def test_path_encoders_in_a_saved_polyvis_model(checkpoints, tmp_path):
    """Truncated path encoders survive save / load (config.json alone rebuilds them)."""
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        root / "configs" / "nano-tiny.yaml",
        [
            f"model.encoders=[{{name: clip, path: '{checkpoints['clip-full'][0]}', layers: [-2]}}, "
            f"{{name: dino, path: '{checkpoints['dinov2'][0]}', layers: [1]}}]",
            "model.fusion={type: concat-channel, align: pool}",
        ],
    )
    torch.manual_seed(0)
    model, proc = build_model(cfg)
    assert [
        len(find_layer_list(e.backbone, e.backbone.config.num_hidden_layers))
        for e in model.encoders
    ] == [2, 1]
    out = save_model(model, proc, tmp_path / "m")
    loaded, proc2 = load_model(out)
    text = proc.apply_chat_template([{"role": "user", "content": "<image> hi"}])
    inputs = proc2(text, images=[image(5)])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
