"""`polyvis export-llava`: the export loads in transformers and answers exactly as polyvis does."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from polyvis.cli import main
from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.export.llava import build_llava, build_llava_processor, check_exportable, verify
from polyvis.models.build import build_model, load_model
from polyvis.serve.chat import answer

SINGLE_CLIP = (
    "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 64, "
    "intermediate_size: 128, num_hidden_layers: 3, num_attention_heads: 2, image_size: 32, "
    "patch_size: 8}, layers: [-2]}]"
)


def _images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(3)
    return [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        for h, w in ((45, 60), (32, 32))
    ]


@pytest.fixture(scope="module")
def exported(tiny_single_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava") / "export"
    assert main(["export-llava", str(tiny_single_model_dir), "--out", str(out)]) == 0
    return out


def test_export_loads_with_transformers_and_gives_the_same_greedy_answers(
    tiny_single_model_dir, exported
) -> None:
    model, processor = load_model(tiny_single_model_dir)
    llava = LlavaForConditionalGeneration.from_pretrained(exported).eval()
    llava_proc = AutoProcessor.from_pretrained(exported)
    assert isinstance(llava_proc, LlavaProcessor)
    assert llava.config.image_token_index == model.config.image_token_id
    for image, question in zip(_images(), ["what is in the image?", "how many shapes?"]):
        expected = answer(model, processor, image, question, max_new_tokens=8)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        text = llava_proc.apply_chat_template(messages, add_generation_prompt=True)
        inputs = llava_proc(text=text, images=image, return_tensors="pt")
        ours = processor(processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}]),
                         images=image, add_special_tokens=False)  # fmt: skip
        assert inputs["input_ids"].tolist() == ours["input_ids"].tolist()
        torch.testing.assert_close(inputs["pixel_values"], ours["pixel_values"][:, 0])
        with torch.no_grad():
            out = llava.generate(**inputs, max_new_tokens=8, do_sample=False)
            ref = model.generate(**ours, max_new_tokens=8, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        assert new.tolist() == ref[0, ours["input_ids"].shape[1] :].tolist()
        assert llava_proc.decode(new, skip_special_tokens=True).strip() == expected


def test_linear_adapter_exports_with_an_identity_second_layer() -> None:
    torch.manual_seed(0)
    cfg = load_config("configs/nano-tiny.yaml", [SINGLE_CLIP, "model.adapter={type: linear}"])
    model, processor = build_model(cfg)
    llava = build_llava(model, processor)
    assert llava.config.projector_hidden_act == "linear"
    assert llava.config.vision_feature_layer == -1  # layer -2 of 3 = the last of the kept 2
    llava_proc = build_llava_processor(model, processor)
    verify(model, processor, llava, llava_proc)
    ids = processor(["<image> hello there"], images=_images()[:1])
    with torch.no_grad():
        ours = model(**ids).logits
        theirs = llava(input_ids=ids["input_ids"], pixel_values=ids["pixel_values"][:, 0]).logits
    torch.testing.assert_close(theirs[..., : ours.shape[-1]], ours, atol=1e-5, rtol=1e-5)


def test_models_llava_cannot_express_are_refused(
    tiny_single_model_dir, tiny_model_dir, capsys
) -> None:
    model, _ = load_model(tiny_single_model_dir)
    settings = check_exportable(model.config)
    assert settings["vision_feature_select_strategy"] == "default"

    def refused(**changes) -> str:
        cfg = copy.deepcopy(model.config)
        for key, value in changes.items():
            setattr(cfg, key, value)
        with pytest.raises(ConfigError) as err:
            check_exportable(cfg)
        return str(err.value)

    assert refused(adapter={"type": "mlp", "depth": 3}).startswith("model.adapter:")
    assert refused(adapter={"type": "transformer"}).startswith("model.adapter:")
    assert refused(fusion={"type": "concat-channel", "proj_dim": 32}).startswith("model.fusion:")
    two, _ = load_model(tiny_model_dir)
    dino = two.config.encoders[1]  # dinov2 with 2 registers: class + 2 prefix tokens
    msg = refused(encoders=[dino])
    assert msg.startswith("model.encoders[0]:") and "3 prefix tokens" in msg
    clip = model.config.encoders[0]
    # towers LLaVA cannot run as a ViT (they used to fail with tracebacks in the export)
    conv = {**clip, "config": {"model_type": "convnext", "hidden_sizes": [8, 16]}}
    assert "convolutional backbone" in refused(encoders=[conv])
    siglip2 = {**clip, "config": {**clip["config"], "model_type": "siglip2_vision_model"}}
    assert "spatial_shapes" in refused(encoders=[siglip2])
    swin = {
        **clip,
        "config": {"model_type": "swin", "embed_dim": 16},
        "feature_maps": "channels_last",
    }
    assert refused(encoders=[swin]).startswith("model.encoders[0]: encoder 'clip' (swin) cannot be")

    capsys.readouterr()
    rc = main(["export-llava", str(tiny_model_dir), "--out", str(tiny_model_dir.parent / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "model.encoders" in err and "2 encoders" in err
    assert len(err.strip().splitlines()) == 1
