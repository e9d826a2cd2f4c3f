"""Vision backbones beyond the ViT family, loaded by path from tiny saved checkpoints: each gives
the features its own reference use gives (SigLIP2 through its NaFlex processor, Hiera's and
Swin's feature maps, MAE with every patch in place), a saved model rebuilds the same modules,
processors take `image_size`, and what cannot work is one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image

from polyvis.config import EncoderSpec
from polyvis.errors import ConfigError
from polyvis.models.build import build_encoder
from polyvis.models.encoders import make_encoder

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def _pil(name: str, **kw):
    return (getattr(T, name + "Pil", None) or getattr(T, name))(**kw)


def _hiera() -> T.HieraConfig:
    return T.HieraConfig(
        embed_dim=16, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4],
        patch_padding=[3, 3], depths=[1, 1], num_heads=[1, 2], query_stride=[2, 2],
        masked_unit_size=[8, 8], num_query_pool=1,
    )  # fmt: skip


# name: (model, processor); processors are the families' own, saved as the hub has them
SPECS = {
    "siglip2": (
        lambda: T.Siglip2VisionModel(T.Siglip2VisionConfig(**TINY, num_patches=16, patch_size=8)),
        lambda: _pil("Siglip2ImageProcessor", patch_size=8, max_num_patches=16),
    ),
    "hiera": (lambda: T.HieraModel(_hiera()), lambda: _pil("BitImageProcessor", size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})),
    "swin": (
        lambda: T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)),
        lambda: _pil("ViTImageProcessor", size={"height": 32, "width": 32}),
    ),
    "vit_mae": (
        lambda: T.ViTMAEModel(T.ViTMAEConfig(**TINY, image_size=32, patch_size=8)),
        lambda: _pil("ViTImageProcessor", size={"height": 32, "width": 32}),
    ),
    "convnext": (
        lambda: T.ConvNextModel(T.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32)),
        lambda: _pil("ConvNextImageProcessor", size={"shortest_edge": 32}),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    torch.manual_seed(0)
    for name, (model, proc) in SPECS.items():
        model().save_pretrained(root / name)
        proc().save_pretrained(root / name)
    return {name: root / name for name in SPECS}


def _image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(32, 40, 3, generator=g) * 255).to(torch.uint8).numpy())


def _encoder(path: Path, layers: list[int], **kw):
    backbone, proc, entry = build_encoder(
        EncoderSpec(name="e", path=str(path), layers=layers, **kw), 0, torch.float32
    )
    return make_encoder(entry, backbone).eval(), proc, entry


@torch.no_grad()
def test_siglip2_reads_patches_as_its_naflex_processor_gives_them(ckpt):
    enc, proc, entry = _encoder(ckpt["siglip2"], [1])
    assert entry["grid"] == [4, 4] and entry["image_size"] == [32, 32]
    ref = T.Siglip2VisionModel.from_pretrained(ckpt["siglip2"]).eval()
    inputs = T.AutoImageProcessor.from_pretrained(ckpt["siglip2"])(
        images=[_image()], return_tensors="pt"
    )
    assert inputs["spatial_shapes"].tolist() == [[4, 4]]
    want = ref(**inputs, output_hidden_states=True).hidden_states[1]
    got = enc(proc(images=[_image()], return_tensors="pt")["pixel_values"])[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("name", "layer", "grid", "layout"), [("hiera", 1, [16, 16], "channels_last"), ("hiera", 2, [8, 8], "channels_last"), ("swin", 1, [4, 4], "channels_first")])  # fmt: skip
@torch.no_grad()
def test_hierarchical_backbones_read_their_feature_maps(ckpt, name, layer, grid, layout):
    """Their token sequences carry no patch grid (Hiera's are not even in raster order)."""
    enc, proc, entry = _encoder(ckpt[name], [layer])
    assert (entry["grid"], entry["num_prefix_tokens"], entry["feature_maps"]) == (grid, 0, layout)
    ref = T.AutoModel.from_pretrained(ckpt[name]).eval()
    pixels = proc(images=[_image()], return_tensors="pt")["pixel_values"]
    maps = ref(pixel_values=pixels, output_hidden_states=True).reshaped_hidden_states[layer]
    want = maps.flatten(1, 2) if layout == "channels_last" else maps.flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc(pixels)[0], want)


@torch.no_grad()
def test_mae_keeps_every_patch_in_place(ckpt):
    enc, proc, entry = _encoder(ckpt["vit_mae"], [2])
    assert entry["grid"] == [4, 4] and entry["num_prefix_tokens"] == 1
    cfg = T.ViTMAEConfig.from_pretrained(ckpt["vit_mae"])
    cfg.mask_ratio = 0.0
    ref = T.ViTMAEModel.from_pretrained(ckpt["vit_mae"], config=cfg).eval()
    pixels = proc(images=[_image()], return_tensors="pt")["pixel_values"]
    out = ref(pixel_values=pixels, output_hidden_states=True)
    h = out.hidden_states[2][:, 1:]  # shuffled by random noise: put back in place
    want = torch.gather(h, 1, out.ids_restore[..., None].expand_as(h))
    torch.testing.assert_close(enc(pixels)[0], want)


@pytest.mark.parametrize("name", ["swin", "hiera", "siglip2"])
def test_saved_entry_rebuilds_the_same_modules(ckpt, name):
    """from_pretrained builds each encoder from its saved entry: the same weights, none missing
    (a Swin cut below its last stage used to rebuild whole, its last stage 'MISSING')."""
    enc, _, entry = _encoder(ckpt[name], [1])
    entry = json.loads(json.dumps(entry))  # as config.json holds it
    rebuilt = make_encoder(entry)
    assert rebuilt.backbone.state_dict().keys() == enc.backbone.state_dict().keys()


def test_image_size_on_a_shortest_edge_processor(ckpt):
    _, _, entry = _encoder(ckpt["convnext"], [-1], image_size=48)
    assert entry["image_size"] == [48, 48]


def test_image_size_a_backbone_cannot_follow_is_one_line(ckpt):
    with pytest.raises(ConfigError) as err:
        _encoder(ckpt["hiera"], [1], image_size=96)
    assert err.value.field == "model.encoders[0].image_size" and "\n" not in str(err.value)
    assert "fails on 96x96 images" in str(err.value)


def test_processor_needing_a_missing_library_is_one_line(ckpt, monkeypatch):
    """DINOv3's processor exists only with torchvision: an ImportError, named as the path."""

    def needs_torchvision(*args, **kwargs):
        raise ImportError("DINOv3ViTImageProcessor requires the Torchvision library. Install it")

    monkeypatch.setattr(T.AutoImageProcessor, "from_pretrained", needs_torchvision)
    with pytest.raises(ConfigError) as err:
        _encoder(ckpt["swin"], [1])
    assert err.value.field == "model.encoders[0].path" and "Torchvision" in str(err.value)
