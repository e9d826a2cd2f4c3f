"""Typed, validated configuration: model / data / train sections, YAML in and out, dotted overrides.

Every error names its field in dotted form, e.g. `model.encoders[1].layers: ...`, and is raised as
a ConfigError (a one-line message on the command line).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from polyvis.config_files import apply_overrides, read_yaml_mapping
from polyvis.errors import ConfigError, config_error_from
from polyvis.errors import field_name as field_name  # re-exported: older callers import it here
from polyvis.options import resolve_typed
from polyvis.registry import registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _expand_home(path: str | None) -> str | None:
    # transformers reads '~/...' as a (malformed) hub id; a shell would have expanded it
    return str(Path(path).expanduser()) if path is not None and path.startswith("~") else path


# A checkpoint: a local directory ('~' expanded) or a hub id
CheckpointPath = Annotated[str | None, AfterValidator(_expand_home)]


# Tiles per image at most: each tile is one more encoder pass, so this bounds the work per image.
MAX_TILES = 64


class TilingSpec(_Strict):
    """High resolution for one encoder: the image is cut into a grid of tiles of its input size.

    grids: the allowed [rows, cols]; the processor picks, per image, the one that fits its size
    and aspect ratio best (LLaVA-NeXT's rule, docs/tiling.md). thumbnail: also encode the whole
    image at the encoder's input size.
    """

    grids: list[tuple[PositiveInt, PositiveInt]] = Field(min_length=1)
    thumbnail: bool = False

    @field_validator("grids")
    @classmethod
    def _distinct(cls, grids: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if len(set(grids)) != len(grids):
            raise ValueError(f"grids {[list(g) for g in grids]} repeat a grid")
        big = [list(g) for g in grids if g[0] * g[1] > MAX_TILES]
        if big:
            raise ValueError(f"grid {big[0]} has more than {MAX_TILES} tiles")
        return grids


# What an encoder gives: `vision` (the default, written as no `kind`): a backbone's patch tokens;
# `detector`: a DETR-family detector's object queries (models/detector.py, docs/fusion.md).
ENCODER_KINDS = ("detector", "vision")
DETECTOR = "detector"

# Every image is converted to RGB before its processor sees it (models/processing.py), so a
# processor normalises 3 channels: image_mean / image_std need one value per channel.
IMAGE_CHANNELS = 3


class EncoderSpec(_Strict):
    """One visual encoder: a checkpoint (`path`) or a transformers config dict (`config`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str | None = None  # None is `vision`; left out of saved configs, which stay as they were
    path: CheckpointPath = None
    config: dict[str, Any] | None = None
    # Hidden-state indices: 0 is the embedding output, 1..L the layers' outputs; negative counts
    # from the end (-1 = last, -2 = penultimate, the LLaVA / OmniFusion / Vary choice).
    layers: list[int] | Literal["all"] = Field(default_factory=lambda: [-2])
    image_size: int | None = Field(default=None, gt=0)  # override the processor's size
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    tiling: TilingSpec | None = None
    # detector only: each query token also gets a learned embedding of its box and class scores
    embed_boxes: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _detector_layers(cls, data: Any) -> Any:
        # a detector gives one layer, its decoder's last: `layers` defaults to [-1] for it
        if isinstance(data, dict) and data.get("kind") == DETECTOR and "layers" not in data:
            data = {**data, "layers": [-1]}
        return data

    @field_validator("image_mean", "image_std")
    @classmethod
    def _per_channel(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if values is None:
            return values
        if len(values) != IMAGE_CHANNELS:
            raise ValueError(
                f"needs one value per RGB channel ({IMAGE_CHANNELS}), got {len(values)}: {values}"
            )
        # std 0 divides by zero: the pixels become inf / nan and the loss is nan at step 1
        if info.field_name == "image_std" and not all(v > 0 for v in values):
            raise ValueError(f"values must be > 0, got {values}")
        return values

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str | None) -> str | None:
        if kind is not None and kind not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder kind {kind!r}; valid: {', '.join(ENCODER_KINDS)}")
        return kind

    @model_validator(mode="after")
    def _one_source(self) -> EncoderSpec:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of 'path' (a checkpoint) or 'config' (random init)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("'config' needs a 'model_type' (e.g. clip_vision_model, dinov2)")
        if isinstance(self.layers, list) and not self.layers:
            raise ValueError("'layers' must name at least one layer, or be 'all'")
        return self


class TokenizerSpec(_Strict):
    """Where the tokenizer comes from: a checkpoint, or trained here (byte-level BPE)."""

    path: CheckpointPath = None
    vocab_size: int = Field(default=512, gt=260)  # when trained here
    corpus: list[str] = Field(default_factory=list)  # text files to train on; empty = built-in text


class LLMSpec(_Strict):
    path: CheckpointPath = None
    config: dict[str, Any] | None = None
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    revision: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> LLMSpec:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of 'path' (a checkpoint) or 'config' (random init)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("'config' needs a 'model_type' (e.g. qwen2, llama)")
        return self


class ModelSection(_Strict):
    encoders: list[EncoderSpec] = Field(min_length=1)
    fusion: dict[str, Any] = Field(default_factory=lambda: {"type": "concat-channel"})
    adapter: dict[str, Any] = Field(default_factory=lambda: {"type": "mlp", "depth": 2})
    llm: LLMSpec
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("encoders")
    @classmethod
    def _unique_names(cls, encoders: list[EncoderSpec]) -> list[EncoderSpec]:
        names = [e.name for e in encoders]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"encoder names must be unique; repeated: {', '.join(dup)}")
        return encoders

    @field_validator("fusion", "adapter")
    @classmethod
    def _has_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "type" not in value:
            raise ValueError("needs a 'type'")
        return value


class DataSection(_Strict):
    """Where training / evaluation records come from (LLaVA JSON / JSONL files)."""

    train: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    image_root: str | None = None  # default: each records file's folder
    # Synthetic families generated on first use (nano presets): names from `polyvis list`.
    synthetic: dict[str, Any] | None = None
    max_length: int = Field(default=512, gt=0)


# the largest seed numpy (and every RNG seeded from train.seed) takes
MAX_SEED = 2**32 - 1


class TrainSection(_Strict):
    stage: Literal["align", "finetune"] = "align"
    init_from: CheckpointPath = None
    max_steps: int = Field(default=100, gt=0)
    batch_size: int = Field(default=8, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    lr_llm: float | None = None
    lr_encoders: float | None = None
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float | None = 1.0
    lora: dict[str, Any] | None = None
    unfreeze_encoders: bool = False
    save_every: int = Field(default=0, ge=0)
    keep_last: int = Field(default=2, gt=0)
    eval_every: int = Field(default=0, ge=0)
    cache_features: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    num_workers: int = Field(default=0, ge=0)


class Config(_Strict):
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _registered(self) -> Config:
        # Fusion and adapter options are checked against their registries (filled on first use)
        # once the keys that polyvis itself reads are set aside.
        section = self.model
        names = [e.name for e in section.encoders]
        resolve_typed(registry("fusion"), fusion_options(section.fusion), "model.fusion")
        resolve_typed(registry("adapter"), adapter_options(section.adapter), "model.adapter")
        check_scales(section.fusion, names)
        check_adapter_init(section.fusion, section.adapter, names)
        check_tiling(section.encoders)
        check_detectors(section)
        return self


# `model.fusion.scales: auto`: measured when training starts (polyvis.train.scales), with these
# options; `model.adapter.init_from` / `init_encoder`: a pretrained projector (models.pretrained).
AUTO = "auto"
SCALE_KEYS = ("scale_images", "scale_reference")
ADAPTER_INIT_KEYS = ("init_from", "init_encoder")


def fusion_options(fusion: dict[str, Any]) -> dict[str, Any]:
    """The fusion's own options: without `scales: auto` and its measuring options."""
    out = {k: v for k, v in fusion.items() if k not in SCALE_KEYS}
    if out.get("scales") == AUTO:
        del out["scales"]
    return out


def adapter_options(adapter: dict[str, Any]) -> dict[str, Any]:
    """The adapter's own options: without the pretrained-projector keys."""
    return {k: v for k, v in adapter.items() if k not in ADAPTER_INIT_KEYS}


def _check_name(value: Any, names: list[str], field: str) -> None:
    if value not in names:
        raise ConfigError(field, f"no encoder {value!r}; valid: {', '.join(names)}")


def check_scales(fusion: dict[str, Any], names: list[str]) -> None:
    """`scales: auto` only where it can be measured; its options only with it."""
    auto = fusion.get("scales") == AUTO
    for key in SCALE_KEYS:
        if key in fusion and not auto:
            raise ConfigError(f"model.fusion.{key}", "only used with scales: auto")
    if not auto:
        return
    if fusion.get("type") != "concat-channel" or len(names) < 2:
        raise ConfigError(
            "model.fusion.scales",
            f"'auto' needs a concat-channel fusion over 2 or more encoders "
            f"(got {fusion.get('type')} over {len(names)})",
        )
    n = fusion.get("scale_images")
    if "scale_images" in fusion and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ConfigError("model.fusion.scale_images", f"must be a positive integer, got {n!r}")
    if "scale_reference" in fusion:
        _check_name(fusion["scale_reference"], names, "model.fusion.scale_reference")


def check_adapter_init(fusion: dict[str, Any], adapter: dict[str, Any], names: list[str]) -> None:
    """`init_from` is a path; `init_encoder` names an encoder of a linear-over-concat model."""
    init_from, encoder = adapter.get("init_from"), adapter.get("init_encoder")
    if "init_from" in adapter and (not isinstance(init_from, str) or not init_from):
        raise ConfigError("model.adapter.init_from", f"must be a file path, got {init_from!r}")
    if "init_encoder" not in adapter:
        return
    field = "model.adapter.init_encoder"
    if init_from is None:
        raise ConfigError(field, "needs model.adapter.init_from (the projector's weights)")
    _check_name(encoder, names, field)
    if fusion.get("type") != "concat-channel" or fusion.get("proj_dim"):
        raise ConfigError(
            field, f"needs a concat-channel fusion without proj_dim (got {fusion.get('type')})"
        )
    if adapter.get("type") != "linear" or adapter.get("bias") is False:
        raise ConfigError(field, f"needs a linear adapter with a bias (got {adapter.get('type')})")


def check_tiling(encoders: list[EncoderSpec]) -> None:
    """One tiled encoder at most: every fusion lays the others out on that encoder's tile grid."""
    tiled = [i for i, e in enumerate(encoders) if e.tiling is not None]
    if len(tiled) > 1:
        names = ", ".join(repr(encoders[i].name) for i in tiled)
        raise ConfigError(
            f"model.encoders[{tiled[1]}].tiling",
            f"only one encoder may be tiled (tiling is set on {names}): the fusions lay every "
            "other encoder out on that encoder's tile grid",
        )


def check_detectors(section: ModelSection) -> None:
    """Detector encoders: one layer, no tiling, `embed_boxes` only on them, and a fusion that
    takes object queries (the fusion class says which: `Fusion.object_query_problem`)."""
    detectors = []
    for i, e in enumerate(section.encoders):
        field = f"model.encoders[{i}]"
        if e.kind != DETECTOR:
            if e.embed_boxes is not None:
                raise ConfigError(f"{field}.embed_boxes", "only applies to kind: detector")
            continue
        detectors.append(e.name)
        if e.layers != [-1]:
            raise ConfigError(
                f"{field}.layers",
                f"detector encoder {e.name!r} gives its decoder's last hidden state, one token "
                "per object query: leave layers out (or give [-1])",
            )
        if e.tiling is not None:
            raise ConfigError(
                f"{field}.tiling",
                f"detector encoder {e.name!r} gives object queries of the whole image; "
                "they cannot be tiled",
            )
    if not detectors:
        return
    fusion = registry("fusion").get(section.fusion["type"])
    tiled = any(e.tiling is not None for e in section.encoders)
    problem = fusion.object_query_problem(section.fusion["type"], detectors[0], tiled)
    if problem:
        raise ConfigError("model.fusion.type", problem)


def _validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise config_error_from(err) from None


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML file (or a dict) and apply `key.path=value` overrides."""
    data = source if isinstance(source, dict) else read_yaml_mapping(source, "config file")
    data = apply_overrides(copy.deepcopy(data), list(overrides or []))
    return _validate(data)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=True)


def dump_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to every output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
