"""Build a PolyVis model and its processor from the config's checkpoints (or random configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
)

try:  # the PIL backend needs no torchvision; import it directly to skip the fallback warning
    from transformers import ViTImageProcessorPil as ViTImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import ViTImageProcessor
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from polyvis.config import (
    AUTO,
    DETECTOR,
    Config,
    EncoderSpec,
    LLMSpec,
    ModelSection,
    adapter_options,
)
from polyvis.errors import ConfigError
from polyvis.models.adapters.pretrained import apply_adapter_init
from polyvis.models.detector import (
    check_detector_config,
    describe_detector,
    detector_auto_class,
    detector_from_config,
    fixed_size_processor,
)
from polyvis.models.encoder_probe import describe, hidden_state_count, probe_errors
from polyvis.models.encoders import (
    backbone_from_config,
    num_hidden_layers,
    prepare_backbone,
    resolve_layers,
    vision_config_of,
)
from polyvis.models.load_checks import (
    check_causal,
    check_causal_lm,
    check_tokenizer,
    check_vision,
    check_vocab,
    checked_config,
    config_message,
    config_refusals,
    load_error,
    probe_lm,
)
from polyvis.models.modeling import PolyVisConfig, PolyVisForConditionalGeneration
from polyvis.models.processing import PolyVisProcessor
from polyvis.models.quiet import quiet_transformers
from polyvis.models.tiling import processor_tiling
from polyvis.models.tokenizer import (
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    add_image_tokens,
    train_bpe_tokenizer,
)

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _config_from_dict(data: dict[str, Any]) -> Any:
    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_vision_backbone(spec: EncoderSpec, field: str, dtype: torch.dtype) -> Any:
    """The vision tower of a checkpoint (CLIP / SigLIP: only the vision half), or a random one."""
    if spec.config is not None:
        try:
            config = _config_from_dict(spec.config)
        except config_refusals() as err:  # huggingface_hub's strict-dataclass errors too
            raise ConfigError(f"{field}.config", config_message(err)) from None
        check_vision(config, f"{field}.config.model_type", "the config")
        try:
            return backbone_from_config(config).to(dtype)
        except config_refusals() as err:  # huggingface_hub's strict-dataclass errors too
            raise ConfigError(f"{field}.config", config_message(err)) from None
    kw = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = checked_config(spec, field, check_vision)
    try:
        vcfg = vision_config_of(config)
        cls = MODEL_MAPPING.get(type(vcfg), AutoModel)
        if vcfg is config:
            return AutoModel.from_pretrained(spec.path, dtype=dtype, **kw)
        # The text half's weights are expected leftovers here: without this, transformers prints
        # a load report listing every one of them as UNEXPECTED on each load.
        with quiet_transformers():
            return cls.from_pretrained(spec.path, dtype=dtype, **kw)
    except (OSError, ValueError) as err:
        raise load_error(f"{field}.path", spec.path, err) from None


def load_detector(spec: EncoderSpec, field: str, dtype: torch.dtype) -> Any:
    """A DETR-family detector (models/detector.py): with its heads only for `embed_boxes`."""
    embed = bool(spec.embed_boxes)
    if spec.config is not None:
        try:
            config = _config_from_dict(spec.config)
        except config_refusals() as err:  # huggingface_hub's strict-dataclass errors too
            raise ConfigError(f"{field}.config", config_message(err)) from None
        check_detector_config(config, f"{field}.config")
        return detector_from_config(config, embed).to(dtype)
    kw = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        check_detector_config(AutoConfig.from_pretrained(spec.path, **kw), f"{field}.path")
        # the bare model from a checkpoint with heads: transformers would list them as UNEXPECTED
        with quiet_transformers():
            return detector_auto_class(embed).from_pretrained(spec.path, dtype=dtype, **kw)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        raise load_error(f"{field}.path", spec.path, err) from None


_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _may_have_processor(path: str) -> bool:
    """False only for a local directory without a processor file (a bare `save_pretrained`)."""
    p = Path(path)
    return not p.is_dir() or any((p / name).is_file() for name in _PROCESSOR_FILES)


def _default_statistics(model_type: str) -> tuple[list[float], list[float]]:
    """The normalisation a family's own processors use, for a checkpoint saved without one:
    SigLIP 0.5 (its processors scale to [-1, 1]), CLIP OpenAI's, everything else ImageNet's."""
    if "siglip" in model_type:
        return [0.5] * 3, [0.5] * 3
    if "clip" in model_type:
        return _CLIP_MEAN, _CLIP_STD
    return _IMAGENET_MEAN, _IMAGENET_STD


def make_image_processor(spec: EncoderSpec, backbone_config: Any, field: str) -> Any:
    """The checkpoint's own processor (with optional size / mean / std overrides), or a plain one
    (config image_size; SigLIP, CLIP or ImageNet statistics) for a checkpoint saved without one."""
    if spec.path is not None and _may_have_processor(spec.path):
        try:
            proc = AutoImageProcessor.from_pretrained(spec.path, revision=spec.revision)
        except (OSError, ValueError) as err:
            raise load_error(f"{field}.path", spec.path, err) from None
        except ImportError as err:  # a processor class with a backend that is not installed
            first = str(err).strip().splitlines()[0].split(". ")[0]
            raise ConfigError(
                f"{field}.path",
                f"cannot load the image processor of {spec.path!r}: {first}; install it, or "
                "use a copy of the checkpoint without preprocessor_config.json (a plain resize)",
            ) from None
        if getattr(proc, "max_num_patches", None):
            proc = _fixed_size_patch_processor(proc, spec)
        elif spec.image_size is not None:
            _resize_to(proc, spec.image_size)
    else:
        size = spec.image_size or getattr(backbone_config, "image_size", None)
        if size is None and getattr(backbone_config, "num_patches", None):  # SigLIP2 (NaFlex)
            side = int(round(backbone_config.num_patches**0.5))
            size = side * int(backbone_config.patch_size)
        if size is None:
            raise ConfigError(f"{field}.image_size", "needed: the encoder config has no image_size")
        size = size if isinstance(size, int) else int(size[0])
        mean, std = _default_statistics(backbone_config.model_type)
        proc = ViTImageProcessor(
            size={"height": size, "width": size}, image_mean=mean, image_std=std
        )
    if spec.image_mean is not None:
        proc.image_mean = list(spec.image_mean)
    if spec.image_std is not None:
        proc.image_std = list(spec.image_std)
    return proc


def _resize_to(proc: Any, side: int) -> None:
    """`image_size` on a checkpoint's processor, in the form its resize reads: ConvNeXt-style
    processors only take shortest_edge (and center-crop it themselves)."""
    size = proc.size
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size.shortest_edge
    if getattr(proc, "do_center_crop", False) and getattr(proc, "crop_size", None):
        proc.size = {"shortest_edge": side}
        proc.crop_size = {"height": side, "width": side}
    elif shortest is not None and getattr(proc, "crop_pct", None) is not None:
        proc.size = {"shortest_edge": side}
    else:
        proc.size = {"height": side, "width": side}


def _fixed_size_patch_processor(proc: Any, spec: EncoderSpec) -> Any:
    """SigLIP2's NaFlex processor gives each image its own patch grid (up to max_num_patches);
    polyvis packs one size per encoder, so images are resized to the square of that many
    patches (or of image_size) with the processor's own statistics and resampling."""
    patch = int(proc.patch_size)
    size = spec.image_size or int(proc.max_num_patches**0.5) * patch
    return ViTImageProcessor(
        size={"height": size, "width": size},
        image_mean=list(proc.image_mean),
        image_std=list(proc.image_std),
        resample=proc.resample,
    )


def processor_output_size(proc: Any) -> tuple[int, int]:
    """The (H, W) a processor produces, measured on a dummy image (works for any processor)."""
    pv = proc(images=[Image.new("RGB", (97, 73))], return_tensors="pt")["pixel_values"]
    return int(pv.shape[-2]), int(pv.shape[-1])


def build_encoder(spec: EncoderSpec, index: int, dtype: torch.dtype) -> tuple[Any, Any, dict]:
    field = f"model.encoders[{index}]"
    if spec.kind == DETECTOR:
        backbone = load_detector(spec, field, dtype)
        proc = fixed_size_processor(make_image_processor(spec, backbone.config, field), field)
        size = processor_output_size(proc)
        entry = describe_detector(backbone, size, bool(spec.embed_boxes), field)
        config = json.loads(backbone.config.to_json_string(use_diff=False))
        return backbone, proc, {"name": spec.name, **entry, "config": config}
    backbone = load_vision_backbone(spec, field, dtype)
    proc = make_image_processor(spec, backbone.config, field)
    image_size = processor_output_size(proc)
    total = num_hidden_layers(backbone.config)
    with probe_errors(field, image_size, spec.image_size is not None):
        if total is None:
            total = hidden_state_count(backbone, image_size) - 1
        layers = resolve_layers(spec.layers, total, f"{field}.layers")
        prepare_backbone(backbone, max(layers))
        entry = describe(backbone, layers, image_size, f"{field}.layers")
    entry = {
        "name": spec.name,
        **entry,
        "config": json.loads(backbone.config.to_json_string(use_diff=False)),
    }
    if spec.tiling is not None:  # only when used: untiled configs are saved as they always were
        entry["tiling"] = {
            "grids": [list(g) for g in spec.tiling.grids],
            "thumbnail": spec.tiling.thumbnail,
        }
    return backbone, proc, entry


def build_language_model(spec: LLMSpec, dtype: torch.dtype) -> tuple[Any, Any]:
    field = "model.llm"
    if spec.path is not None:  # before the tokenizer, whose error would hide the cause
        checked_config(spec, field, check_causal_lm)
    tok_path = spec.tokenizer.path or spec.path
    if tok_path is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                tok_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
            )
        except (OSError, ValueError) as err:
            tok_field = f"{field}.tokenizer.path" if spec.tokenizer.path else f"{field}.path"
            raise load_error(tok_field, tok_path, err) from None
        check_tokenizer(tokenizer, spec)
    else:
        texts = [Path(p).read_text(encoding="utf-8") for p in spec.tokenizer.corpus]
        tokenizer = train_bpe_tokenizer(texts or None, spec.tokenizer.vocab_size)
    if spec.path is not None:
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                spec.path,
                dtype=dtype,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
            )
        except (OSError, ValueError) as err:
            raise load_error(f"{field}.path", spec.path, err) from None
        check_vocab(lm, tokenizer, spec)
    else:
        cfg = dict(spec.config)
        cfg.setdefault("vocab_size", len(tokenizer))
        if cfg["vocab_size"] < len(tokenizer):
            raise ConfigError(
                f"{field}.config.vocab_size",
                f"{cfg['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}",
            )
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tid = getattr(tokenizer, key)
            if tid is not None:
                cfg.setdefault(key, tid)
        try:
            lm = AutoModelForCausalLM.from_config(_config_from_dict(cfg)).to(dtype)
        except config_refusals() as err:  # huggingface_hub's strict-dataclass errors too
            raise ConfigError(f"{field}.config", config_message(err)) from None
        probe_lm(lm, f"{field}.config")
    check_causal(lm.config, f"{field}.path" if spec.path is not None else f"{field}.config")
    return lm, tokenizer


def build_model(
    cfg: Config | ModelSection,
) -> tuple[PolyVisForConditionalGeneration, PolyVisProcessor]:
    """Build the (untrained) model and its processor from a config's model section."""
    section = cfg.model if isinstance(cfg, Config) else cfg
    if section.fusion.get("scales") == AUTO:
        raise ConfigError(
            "model.fusion.scales",
            "'auto' is measured when training starts (polyvis train); "
            "give one number per encoder to build a model without training",
        )
    dtype = DTYPES[section.dtype]
    backbones, procs, entries = [], {}, []
    for i, spec in enumerate(section.encoders):
        backbone, proc, entry = build_encoder(spec, i, dtype)
        backbones.append(backbone)
        procs[spec.name] = proc
        entries.append(entry)
    lm, tokenizer = build_language_model(section.llm, dtype)
    ids = add_image_tokens(tokenizer)
    text_config = lm.config
    config = PolyVisConfig(
        text_config=text_config,
        encoders=entries,
        fusion=dict(section.fusion),
        adapter=adapter_options(section.adapter),  # init_from only says where weights start
        image_token_id=ids[IMAGE_TOKEN],
        image_start_token_id=ids[IMAGE_START_TOKEN],
        image_end_token_id=ids[IMAGE_END_TOKEN],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        # Without this the composite config resets the LM's attention backend to None.
        attn_implementation=lm.config._attn_implementation,
    )
    model = PolyVisForConditionalGeneration(config, language_model=lm, backbones=backbones)
    model.config.image_seq_length = model.image_seq_length
    # Boundary tokens start where ordinary words live, so the frozen LM sees familiar inputs.
    with torch.no_grad():
        emb = lm.get_input_embeddings().weight
        model.image_boundary_embeds.copy_(
            emb.mean(0, keepdim=True).expand(2, -1) + 0.02 * torch.randn(2, emb.shape[1])
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.to(dtype)
    apply_adapter_init(model, section.fusion, section.adapter)
    model.eval()  # like from_pretrained; training code switches to train()
    sizes = {e["name"]: tuple(e["image_size"]) for e in entries}
    tiling = processor_tiling(entries, model.fusion)
    processor = PolyVisProcessor(tokenizer, procs, sizes, model.image_seq_length, tiling)
    return model, processor


def save_model(
    model: PolyVisForConditionalGeneration, processor: PolyVisProcessor, out: str | Path
) -> Path:
    """Write model, tokenizer and processors to one directory (safetensors)."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def model_dir(directory: str | Path) -> Path:
    """The path of a polyvis model directory; a ConfigError when it has no config.json."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError("", f"{directory}: not a polyvis model directory (no config.json)")
    return directory


def load_model(
    directory: str | Path, dtype: torch.dtype | str | None = None, device: str | None = None
) -> tuple[PolyVisForConditionalGeneration, PolyVisProcessor]:
    """Load a polyvis model directory (offline) with its processor."""
    directory = model_dir(directory)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    model = PolyVisForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    if (directory / "lora").is_dir():  # a LoRA run's final model: base weights + adapter
        from peft import PeftModel

        model.language_model = PeftModel.from_pretrained(model.language_model, directory / "lora")
    if device:
        model.to(device)
    model.eval()
    return model, PolyVisProcessor.from_pretrained(directory)
