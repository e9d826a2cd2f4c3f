"""User mistakes in the model / LoRA config give one ConfigError naming the field, not a traceback
from transformers / peft (or a crash at the first training step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from polyvis.config import EncoderSpec, LLMSpec, load_config
from polyvis.errors import ConfigError
from polyvis.models.build import build_encoder, build_language_model, build_model
from polyvis.models.encoders import VisionEncoder, find_layer_list, make_encoder
from polyvis.models.tokenizer import IMAGE_TOKENS, add_image_tokens, train_bpe_tokenizer
from polyvis.train.stages import configure_stage

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
LM_VOCAB = 300
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def field_error(excinfo: pytest.ExceptionInfo[ConfigError], field: str) -> str:
    """The message, after checking that it is one line and names `field`."""
    err = excinfo.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ") and "\n" not in str(err)
    return str(err)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lm: a Qwen2 LM (vocab_size 300) saved with a tokenizer of 303 tokens; lm_only: the same
    weights without a tokenizer; tok300_images: 300 tokens plus polyvis' 3 image tokens."""
    root = tmp_path_factory.mktemp("build-errors")
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=LM_VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
        )
    )
    big = train_bpe_tokenizer(None, LM_VOCAB + 3)
    assert len(big) == LM_VOCAB + 3
    lm.save_pretrained(root / "lm")
    big.save_pretrained(root / "lm")
    big.save_pretrained(root / "tok303")
    lm.save_pretrained(root / "lm_only")
    fits = train_bpe_tokenizer(None, LM_VOCAB)
    assert len(fits) == LM_VOCAB
    add_image_tokens(fits)
    fits.save_pretrained(root / "tok300_images")
    return {name: root / name for name in ("lm", "lm_only", "tok303", "tok300_images")}


# -- 1: a tokenizer larger than a checkpoint LM's vocabulary -------------------------------------


def test_llm_path_vocab_smaller_than_tokenizer(dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_language_model(LLMSpec(path=str(dirs["lm"])), torch.float32)
    msg = field_error(excinfo, "model.llm.path")
    assert "vocab_size 300" in msg and "303" in msg


def test_llm_tokenizer_path_vocab_smaller_than_tokenizer(dirs: dict[str, Path]) -> None:
    spec = LLMSpec(path=str(dirs["lm_only"]), tokenizer={"path": str(dirs["tok303"])})
    with pytest.raises(ConfigError) as excinfo:
        build_language_model(spec, torch.float32)
    assert "303" in field_error(excinfo, "model.llm.tokenizer.path")


def test_llm_path_image_tokens_do_not_count(dirs: dict[str, Path]) -> None:
    # polyvis' own image tokens lie past the vocabulary by design (modeling.embed_tokens)
    spec = LLMSpec(path=str(dirs["lm_only"]), tokenizer={"path": str(dirs["tok300_images"])})
    lm, tokenizer = build_language_model(spec, torch.float32)
    assert len(tokenizer) == LM_VOCAB + len(IMAGE_TOKENS)
    assert lm.get_input_embeddings().weight.shape[0] == LM_VOCAB


# -- 2: LoRA target_modules ------------------------------------------------------------------------


def lora_model(targets: str) -> tuple[object, object]:
    cfg = load_config(
        NANO_TINY, ["train.stage=finetune", f"train.lora={{r: 4, target_modules: {targets}}}"]
    )
    model, _ = build_model(cfg)
    return model, cfg


@pytest.mark.parametrize(
    ("targets", "missing"),
    [("[nonexistent]", "nonexistent"), ("[q_proj, nonexistnt]", "nonexistnt"), ("'zz.*'", "zz")],
)
def test_lora_target_modules_typo(targets: str, missing: str) -> None:
    model, cfg = lora_model(targets)
    with pytest.raises(ConfigError) as excinfo:
        configure_stage(model, cfg.train)
    msg = field_error(excinfo, "train.lora.target_modules")
    assert missing in msg and "q_proj" in msg  # what is missing, and what there is


def test_lora_target_modules_valid() -> None:
    model, cfg = lora_model("[q_proj, self_attn.v_proj]")
    configure_stage(model, cfg.train)
    trainable = [n for n, p in model.language_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("v_proj" in n for n in trainable) and any("q_proj" in n for n in trainable)


# -- 3: image_mean / image_std ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.encoders.0.image_mean=[0.5,0.5]", "model.encoders[0].image_mean"),
        ("model.encoders.1.image_mean=[0.5,0.5,0.5,0.5]", "model.encoders[1].image_mean"),
        ("model.encoders.0.image_std=[0.5]", "model.encoders[0].image_std"),
        ("model.encoders.0.image_std=[0,0,0]", "model.encoders[0].image_std"),
        ("model.encoders.1.image_std=[0.2,-0.2,0.2]", "model.encoders[1].image_std"),
    ],
)
def test_image_mean_std_validated(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(NANO_TINY, [override])
    field_error(excinfo, field)


def test_image_mean_std_accepted() -> None:
    cfg = load_config(
        NANO_TINY,
        ["model.encoders.0.image_mean=[0.5,0.5,0.5]", "model.encoders.0.image_std=[1,1,1]"],
    )
    assert cfg.model.encoders[0].image_std == [1.0, 1.0, 1.0]


# -- 4: layers [0] is the embedding output -----------------------------------------------------


BACKBONES = {
    "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)),
    "dinov2": lambda: Dinov2Model(
        Dinov2Config(**{**TINY_VISION, "image_size": 28, "patch_size": 7})
    ),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_layers_zero_is_embedding_output(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    backbone = BACKBONES[name]()
    backbone.eval().save_pretrained(tmp_path / "enc")
    spec = EncoderSpec(name="e", path=str(tmp_path / "enc"), layers=[0])
    truncated, proc, entry = build_encoder(spec, 0, torch.float32)
    assert entry["layers"] == [0]
    # one block stays: it is what records the embedding output
    assert len(find_layer_list(truncated, 1)) == 1
    enc = VisionEncoder(truncated.eval(), entry)
    size = entry["image_size"]
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (feat,) = enc(pixels)
        ref = backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(ref) == 3  # the original keeps both blocks
    torch.testing.assert_close(feat, ref[0][:, entry["num_prefix_tokens"] :])
    # a saved model rebuilds the same truncated backbone from the entry
    rebuilt = make_encoder(entry)
    assert len(find_layer_list(rebuilt.backbone, 1)) == 1


def test_layers_zero_in_a_model() -> None:
    model, _ = build_model(load_config(NANO_TINY, ["model.encoders.1.layers=[0]"]))
    assert model.encoders[1].layers == [0]


# -- 5: an LM as an encoder; paths that do not exist -------------------------------------------


def test_encoder_path_is_a_language_model(dirs: dict[str, Path]) -> None:
    spec = EncoderSpec(name="e", path=str(dirs["lm"]))
    with pytest.raises(ConfigError) as excinfo:
        build_encoder(spec, 0, torch.float32)
    msg = field_error(excinfo, "model.encoders[0].path")
    assert "not a vision model" in msg and "'qwen2'" in msg


def test_encoder_config_is_a_language_model() -> None:
    spec = EncoderSpec(name="e", config={"model_type": "qwen2", "hidden_size": 32})
    with pytest.raises(ConfigError) as excinfo:
        build_encoder(spec, 1, torch.float32)
    msg = field_error(excinfo, "model.encoders[1].config.model_type")
    assert "not a vision model" in msg and "'qwen2'" in msg


@pytest.mark.parametrize(
    "path", ["/nonexistent/polyvis-enc", "./no-such-polyvis-dir", "../no/such", "~/no-such-polyvis"]
)
def test_missing_local_paths(path: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_encoder(EncoderSpec(name="e", path=path), 0, torch.float32)
    shown = str(Path(path).expanduser()) if path.startswith("~") else path  # '~' is expanded
    want = f"cannot load {shown!r}: no such directory"
    assert field_error(excinfo, "model.encoders[0].path").endswith(want)
    with pytest.raises(ConfigError) as excinfo:
        build_language_model(LLMSpec(path=path), torch.float32)
    assert field_error(excinfo, "model.llm.path").endswith(want)


def test_hub_id_keeps_hub_message() -> None:
    # `org/name` may be a hub checkpoint: not called a missing directory (tests run offline)
    with pytest.raises(ConfigError) as excinfo:
        build_encoder(EncoderSpec(name="e", path="polyvis-none/enc"), 0, torch.float32)
    msg = field_error(excinfo, "model.encoders[0].path")
    assert "no such directory" not in msg and "reachable hub checkpoint" in msg


def test_a_checkpoint_path_under_home_is_expanded(monkeypatch, tmp_path):
    from polyvis.config import Config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = Config.model_validate(
        {
            "model": {
                "encoders": [{"name": "a", "path": "~/ckpt/clip"}],
                "llm": {"path": "~/ckpt/lm", "tokenizer": {"path": "~/tok"}},
            },
            "train": {"init_from": "~/runs/a"},
        }
    )
    assert cfg.model.encoders[0].path == str(tmp_path / "ckpt" / "clip")
    assert cfg.model.llm.path == str(tmp_path / "ckpt" / "lm")
    assert cfg.model.llm.tokenizer.path == str(tmp_path / "tok")
    assert cfg.train.init_from == str(tmp_path / "runs" / "a")
    hub = Config.model_validate({"model": {"encoders": [{"name": "a", "path": "org/clip"}],
                                           "llm": {"path": "Qwen/Qwen2-0.5B"}}})  # fmt: skip
    assert hub.model.encoders[0].path == "org/clip" and hub.model.llm.path == "Qwen/Qwen2-0.5B"


def test_an_encoder_saved_without_a_processor_gets_its_familys_statistics() -> None:
    from transformers import CLIPVisionConfig, Dinov2Config, SiglipVisionConfig

    from polyvis.models.build import make_image_processor

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "image_size": 32, "patch_size": 8}  # fmt: skip
    spec = EncoderSpec(name="e", config={"model_type": "x"})
    for config, mean in [
        (SiglipVisionConfig(**small), [0.5, 0.5, 0.5]),
        (CLIPVisionConfig(**small), [0.48145466, 0.4578275, 0.40821073]),
        (Dinov2Config(**small), [0.485, 0.456, 0.406]),
    ]:
        assert list(make_image_processor(spec, config, "e").image_mean) == mean, config.model_type


def test_a_bidirectional_encoder_as_the_lm_names_the_field() -> None:
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64}  # fmt: skip
    with pytest.raises(ConfigError) as excinfo:
        build_language_model(LLMSpec(config=bert), torch.float32)
    assert "attends in both directions" in field_error(excinfo, "model.llm.config")
    lm, _ = build_language_model(LLMSpec(config={**bert, "is_decoder": True}), torch.float32)
    assert lm.config.is_decoder  # a BERT made causal is accepted


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path) -> None:
    from polyvis.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  encoders: [\n  llm: {path: x\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(bad)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: not valid YAML (line 4, column 1: expected")


def test_an_override_whose_value_is_not_yaml_names_its_key() -> None:
    from polyvis.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(tiny, ["model.adapter={type: linear"])
    msg = field_error(excinfo, "model.adapter")
    assert msg.startswith("model.adapter: the value is not valid YAML (line 1, column 14: ")


def test_a_load_error_whose_first_line_ends_in_a_colon_keeps_the_next(tmp_path) -> None:
    from polyvis.models.load_checks import load_error

    err = ValueError("Couldn't instantiate the tokenizer from one of:\n(1) a tokenizer.json\n")
    msg = str(load_error("model.llm.path", str(tmp_path), err))
    assert msg.endswith("from one of: (1) a tokenizer.json") and "\n" not in msg


@pytest.mark.parametrize(("size", "hint"), [(30, "24x24"), (36, "32x32")])
def test_image_size_not_a_multiple_of_the_patch_is_refused(size, hint: str) -> None:
    # the patch embedding's stride would silently drop the last rows and columns of pixels
    vit = {"model_type": "clip_vision_model", **TINY_VISION}  # patch 8

    def spec(image_size: int) -> EncoderSpec:
        entry = {"name": "clip", "config": vit, "image_size": image_size, "layers": [-1]}
        return EncoderSpec.model_validate(entry)

    with pytest.raises(ConfigError) as excinfo:
        build_encoder(spec(size), 0, torch.float32)
    msg = field_error(excinfo, "model.encoders[0].image_size")
    assert "not a multiple of the patch size 8x8" in msg and f"e.g. {hint}" in msg
    assert build_encoder(spec(24), 0, torch.float32)[2]["grid"] == [3, 3]
