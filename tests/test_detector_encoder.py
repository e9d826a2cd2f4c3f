"""A DETR-family detector as an encoder (`kind: detector`): tiny random DETR, Conditional DETR and
RT-DETR checkpoints (non-timm ResNet backbones, 64 px processors) saved and loaded by path, beside a
CLIP tower; the tokens are the decoder's last hidden state, with `embed_boxes` a learned embedding
of each query's box and class probabilities; sequence fusions only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForObjectDetection,
    ConditionalDetrConfig,
    ConditionalDetrImageProcessorPil,
    DeformableDetrConfig,
    DeformableDetrImageProcessorPil,
    DetrConfig,
    DetrImageProcessorPil,
    ResNetConfig,
    RTDetrConfig,
    RTDetrImageProcessorPil,
    RTDetrResNetConfig,
)

from _tiling_helpers import CLIP, NANO_TINY, TILED
from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.models.build import build_model, load_model, save_model
from polyvis.models.modeling import PolyVisForConditionalGeneration

QUERIES, LABELS, D_MODEL = 8, 5, 32
SEQUENCE = {
    "concat-sequence": "{type: concat-sequence}",
    "resampler": "{type: resampler, num_queries: 4, depth: 1, heads: 2}",
}
POSITIONAL = {
    "add": "{type: add}",
    "mul": "{type: mul}",
    "gated": "{type: gated}",
    "concat-channel": "{type: concat-channel}",
    "omnifusion": "{type: omnifusion}",
    "sva": "{type: sva, heads: 2}",
    "interleave": "{type: interleave}",
}
DETR_LIKE = {
    "d_model": D_MODEL,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_queries": QUERIES,
    "num_labels": LABELS,
}


def resnet() -> ResNetConfig:
    return ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]
    )


def detector_configs() -> dict:
    """name: (config, processor) of tiny detectors with no timm and no pretrained weights."""
    rt_backbone = RTDetrResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16],
        depths=[1, 1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3"],
    )
    size = {"size": {"height": 64, "width": 64}}
    return {
        "detr": (
            DetrConfig(use_timm_backbone=False, backbone_config=resnet(), **DETR_LIKE),
            DetrImageProcessorPil(**size, do_pad=False),
        ),
        "conditional_detr": (
            ConditionalDetrConfig(use_timm_backbone=False, backbone_config=resnet(), **DETR_LIKE),
            ConditionalDetrImageProcessorPil(**size, do_pad=False),
        ),
        "deformable_detr": (
            DeformableDetrConfig(
                use_timm_backbone=False,
                backbone_config=ResNetConfig(
                    embedding_size=8,
                    hidden_sizes=[8, 16, 16],
                    depths=[1, 1, 1],
                    out_features=["stage1", "stage2", "stage3"],
                ),
                num_feature_levels=3,
                encoder_n_points=2,
                decoder_n_points=2,
                **DETR_LIKE,
            ),
            DeformableDetrImageProcessorPil(**size, do_pad=False),
        ),
        "rt_detr": (
            RTDetrConfig(
                backbone_config=rt_backbone,
                encoder_hidden_dim=D_MODEL,
                encoder_in_channels=[8, 16, 16],
                decoder_in_channels=[D_MODEL] * 3,
                hidden_expansion=0.5,
                **DETR_LIKE,
            ),
            RTDetrImageProcessorPil(**size),
        ),
    }


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, Path]:
    """Each detector with its heads and image processor, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("detectors")
    out = {}
    for name, (config, proc) in detector_configs().items():
        assert getattr(config.backbone_config, "use_pretrained_backbone", False) is False
        torch.manual_seed(0)
        AutoModelForObjectDetection.from_config(config).save_pretrained(root / name)
        proc.save_pretrained(root / name)
        out[name] = root / name
    return out


def det(path: Path, embed_boxes: bool | None = None) -> str:
    boxes = "" if embed_boxes is None else f", embed_boxes: {str(embed_boxes).lower()}"
    return f"{{name: det, path: {path}, kind: detector{boxes}}}"


def config(fusion: str, detector: str, first: str = CLIP + "}"):
    return load_config(
        NANO_TINY, [f"model.encoders=[{first}, {detector}]", f"model.fusion={fusion}"]
    )


def image(seed: int, size: tuple[int, int] = (50, 40)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def inputs_for(processor, images: list[Image.Image]):
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is here?"}])
    return processor([text] * len(images), images=[[im] for im in images])


def text_labels(model, inputs) -> torch.Tensor:
    """Every text token as a target (padding and the image tokens, past the LM's vocabulary, not)."""
    ids = inputs["input_ids"]
    outside = ids >= model.config.text_config.vocab_size
    return ids.masked_fill((inputs["attention_mask"] == 0) | outside, -100)


def randomise_box_embedding(model) -> None:
    """The box embedding starts at zero; give it values so that it changes the tokens."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.query_embeds.parameters():
            p.normal_(std=0.5)


# -- tokens ----------------------------------------------------------------------------------------
def test_tokens_are_the_decoders_last_hidden_state(detectors):
    model, processor = build_model(
        config(SEQUENCE["concat-sequence"], det(detectors["detr"], True))
    )
    entry = model.config.encoders[1]
    assert (entry["kind"], entry["grid"], entry["dim"]) == ("detector", [1, QUERIES], D_MODEL)
    assert entry["box_features"] == 4 + LABELS + 1 and entry["class_scores"] == "softmax"
    pv = processor.preprocess_images([image(0), image(1)])
    ref = AutoModelForObjectDetection.from_pretrained(detectors["detr"]).eval()
    with torch.no_grad():
        packed = model.encode_images(pv)[1][0]
        out = ref(pixel_values=pv[:, 1, :, :64, :64])
    assert packed.shape == (2, QUERIES, D_MODEL + 4 + LABELS + 1)
    torch.testing.assert_close(packed[..., :D_MODEL], out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(packed[..., D_MODEL : D_MODEL + 4], out.pred_boxes, rtol=0, atol=0)
    torch.testing.assert_close(packed[..., D_MODEL + 4 :], out.logits.softmax(-1), rtol=0, atol=0)


def test_without_boxes_the_bare_model_is_loaded(detectors):
    model, processor = build_model(config(SEQUENCE["resampler"], det(detectors["detr"])))
    enc = model.encoders[1]
    assert type(enc.backbone).__name__ == "DetrModel"  # no heads: no unused weights
    assert len(model.query_embeds) == 0 and not model.config.encoders[1]["embed_boxes"]
    pv = processor.preprocess_images([image(0)])
    ref = AutoModel.from_pretrained(detectors["detr"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            enc(pv[:, 1, :, :64, :64])[0], ref(pixel_values=pv[:, 1, :, :64, :64]).last_hidden_state
        )


# -- forward and generation ------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", sorted(SEQUENCE))
def test_forward_and_generation(detectors, fusion):
    torch.manual_seed(0)
    model, processor = build_model(config(SEQUENCE[fusion], det(detectors["detr"], True)))
    randomise_box_embedding(model)
    # CLIP: 32 px / 8 = 4x4 patches; the resampler's 4 queries lie on a 2x2 grid
    want = (16 + QUERIES, None) if fusion == "concat-sequence" else (4, (2, 2))
    assert (model.fusion.num_tokens, model.fusion.grid) == want
    inputs = inputs_for(processor, [image(0), image(1, (30, 60))])
    labels = text_labels(model, inputs)
    out = model(**inputs, labels=labels)
    assert out.logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(out.loss)
    gen = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape == (2, inputs["input_ids"].shape[1] + 3)
    # a batch of two answers each image as it is answered alone
    alone = model.generate(**inputs_for(processor, [image(0)]), max_new_tokens=3, do_sample=False)
    assert torch.equal(gen[0, -3:], alone[0, -3:])


def test_box_embedding_is_a_projector_parameter_that_trains(detectors):
    model, processor = build_model(
        config(SEQUENCE["concat-sequence"], det(detectors["detr"], True))
    )
    emb = model.query_embeds["1"]
    assert not emb.weight.any() and not emb.bias.any()  # starts as the plain queries
    assert set(map(id, emb.parameters())) <= set(map(id, model.parameter_groups()["projector"]))
    model.set_trainable(encoders=False, projector=True, llm=False)
    model.train()
    inputs = inputs_for(processor, [image(0)])
    labels = text_labels(model, inputs)
    model(**inputs, labels=labels).loss.backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoders.parameters())
    # cached (packed) features give the same tokens as pixels: the embedding runs after the cache
    model.eval()
    randomise_box_embedding(model)
    pv = processor.preprocess_images([image(2)])
    with torch.no_grad():
        cached = model.encode_images(pv)
        assert torch.equal(
            model.get_image_features(pv), model.get_image_features(encoder_features=cached)
        )


# -- save / load -----------------------------------------------------------------------------------
def test_exact_save_load_round_trip(detectors, tmp_path):
    torch.manual_seed(0)
    model, processor = build_model(
        config(SEQUENCE["concat-sequence"], det(detectors["detr"], True))
    )
    randomise_box_embedding(model)
    out = save_model(model, processor, tmp_path / "model")
    loaded, proc2 = load_model(out)
    before, after = model.state_dict(), loaded.state_dict()
    assert set(before) == set(after)
    assert any(k.startswith("query_embeds.1.") for k in before)
    assert any(k.startswith("encoders.1.backbone.bbox_predictor") for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    inputs = inputs_for(processor, [image(3)])
    assert torch.equal(inputs["pixel_values"], inputs_for(proc2, [image(3)])["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    # the box embedding is part of the result: zeroing it changes the logits
    with torch.no_grad():
        loaded.query_embeds["1"].reset_parameters()
        assert not torch.equal(model(**inputs).logits, loaded(**inputs).logits)


@pytest.mark.parametrize("name", ["conditional_detr", "deformable_detr", "rt_detr"])
def test_other_detr_families(detectors, name, tmp_path):
    torch.manual_seed(0)
    model, processor = build_model(config(SEQUENCE["resampler"], det(detectors[name], True)))
    entry = model.config.encoders[1]
    assert entry["grid"] == [1, QUERIES] and entry["class_scores"] == "sigmoid"  # focal-loss heads
    assert entry["box_features"] == 4 + LABELS
    randomise_box_embedding(model)
    inputs = inputs_for(processor, [image(4)])
    gen = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    out = save_model(model, processor, tmp_path / name)
    # every weight comes from the file (Deformable DETR's heads, shared across decoder layers, too)
    _, info = PolyVisForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    loaded, _ = load_model(out)
    before, after = model.state_dict(), loaded.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(gen, loaded.generate(**inputs, max_new_tokens=2, do_sample=False))


def test_detector_from_a_config(detectors):
    backbone = "{model_type: resnet, embedding_size: 8, hidden_sizes: [8, 16], depths: [1, 1], out_features: [stage2]}"
    detr = ", ".join(f"{k}: {v}" for k, v in DETR_LIKE.items())
    spec = (
        "{name: det, kind: detector, image_size: 48, config: {model_type: detr, "
        f"use_timm_backbone: false, backbone_config: {backbone}, {detr}}}}}"
    )
    model, processor = build_model(config(SEQUENCE["concat-sequence"], spec))
    assert model.config.encoders[1]["image_size"] == [48, 48]
    assert processor.preprocess_images([image(0)]).shape[-2:] == (48, 48)


def test_tiled_encoder_beside_a_detector(detectors):
    model, processor = build_model(config(SEQUENCE["resampler"], det(detectors["detr"]), TILED))
    gen = model.generate(**inputs_for(processor, [image(5, (96, 32))]), max_new_tokens=2)
    assert gen.shape[0] == 1
    with pytest.raises(ConfigError, match=r"^model\.fusion\.type: concat-sequence fuses each tile"):
        config(SEQUENCE["concat-sequence"], det(detectors["detr"]), TILED)


# -- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", sorted(POSITIONAL))
def test_position_wise_fusion_is_refused(detectors, fusion):
    with pytest.raises(ConfigError) as err:
        config(POSITIONAL[fusion], det(detectors["detr"]))
    assert str(err.value) == (
        f"model.fusion.type: {fusion} aligns encoders position by position; detector encoder "
        "'det' gives object queries, use concat-sequence or resampler"
    )


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ConfigError) as err:
        config("{type: concat-sequence}", "{name: det, path: x, kind: detektor}")
    assert str(err.value) == (
        "model.encoders[1].kind: unknown encoder kind 'detektor'; valid: detector, vision"
    )


@pytest.mark.parametrize(
    "spec, field, text",
    [
        ("{name: det, path: x, kind: detector, layers: [-2]}", "model.encoders[1].layers", "leave layers out"),
        ("{name: det, path: x, kind: detector, tiling: {grids: [[1, 2]]}}", "model.encoders[1].tiling", "cannot be tiled"),
        (CLIP.replace("clip", "clip2", 1) + ", embed_boxes: true}", "model.encoders[1].embed_boxes", "only applies to kind: detector"),
    ],
)  # fmt: skip
def test_detector_config_errors(spec, field, text):
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .*{text}"):
        config("{type: concat-sequence}", spec)


def test_a_vision_checkpoint_is_not_a_detector(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^model\.encoders\[1\]\.path: kind: detector needs"):
        build_model(config("{type: concat-sequence}", det(tmp_path)))


def test_vision_configs_dump_as_before(detectors):
    from polyvis.config import config_to_dict

    dumped = config_to_dict(config(SEQUENCE["concat-sequence"], det(detectors["detr"])))
    first, second = dumped["model"]["encoders"]
    assert "kind" not in first and "embed_boxes" not in first
    assert second["kind"] == "detector" and second["layers"] == [-1]


def test_feature_cache_keeps_the_packed_detector_output(detectors, tmp_path):
    """The cache stores the frozen detector's packed output; the box embedding still trains on it."""
    import hashlib

    from polyvis.train.feature_cache import FeatureCache

    model, processor = build_model(config(SEQUENCE["resampler"], det(detectors["detr"], True)))
    randomise_box_embedding(model)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        image(10 + i).save(paths[-1])
    cache = FeatureCache.for_model(model, processor, root=tmp_path / "cache")
    assert cache.fill(model, processor, paths)["images"] == 2
    hashes = [hashlib.sha1(p.read_bytes()).hexdigest() for p in paths]
    cached = cache.lookup(hashes)
    assert cached[1][0].shape == (2, QUERIES, D_MODEL + 4 + LABELS + 1)
    pv = processor.preprocess_images([Image.open(p) for p in paths])
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(encoder_features=cached), model.get_image_features(pv)
        )
