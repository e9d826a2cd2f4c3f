"""Typed, validated configuration: model / data / train sections, YAML in and out, dotted overrides.

Every error names its field in dotted form, e.g. `model.encoders[1].layers: ...`, and is raised as
a ConfigError (a one-line message on the command line).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polyvis.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EncoderSpec(_Strict):
    """One visual encoder: a checkpoint (`path`) or a transformers config dict (`config`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str | None = None
    config: dict[str, Any] | None = None
    # Hidden-state indices: 0 is the embedding output, 1..L the layers' outputs; negative counts
    # from the end (-1 = last, -2 = penultimate, the LLaVA / OmniFusion / Vary choice).
    layers: list[int] | Literal["all"] = Field(default_factory=lambda: [-2])
    image_size: int | None = Field(default=None, gt=0)  # override the processor's size
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    revision: str | None = None
    trust_remote_code: bool = False

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

    path: str | None = None
    vocab_size: int = Field(default=512, gt=260)  # when trained here
    corpus: list[str] = Field(default_factory=list)  # text files to train on; empty = built-in text


class LLMSpec(_Strict):
    path: str | None = None
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


class TrainSection(_Strict):
    stage: Literal["align", "finetune"] = "align"
    init_from: str | None = None
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
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)


class Config(_Strict):
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _registered(self) -> Config:
        # Fusion and adapter options are checked against their registries at load time.
        from polyvis.models.adapters import ADAPTERS
        from polyvis.models.fusion import FUSIONS
        from polyvis.options import resolve_typed

        resolve_typed(FUSIONS, self.model.fusion, "model.fusion")
        resolve_typed(ADAPTERS, self.model.adapter, "model.adapter")
        return self


def field_name(loc: tuple[Any, ...]) -> str:
    """('model', 'encoders', 1, 'layers') -> 'model.encoders[1].layers'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[int]", "literal['all']") or str(part).startswith(
            ("function-", "literal")
        ):
            continue  # pydantic's union-branch labels are not fields
        else:
            out += f".{part}" if out else str(part)
    return out


def _validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        original = first.get("ctx", {}).get("error")
        if isinstance(original, ConfigError):  # raised by a validator: it already names its field
            raise original from None
        msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        msg = msg.removeprefix("Value error, ")
        raise ConfigError(field_name(first["loc"]), msg) from None


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """'model.fusion.type=add' -> (['model', 'fusion', 'type'], 'add'); values parse as YAML."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.path=value")
    key, raw = text.split("=", 1)
    parts: list[str | int] = [
        int(p) if p.lstrip("-").isdigit() else p for p in key.strip().split(".")
    ]
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    raise ConfigError(".".join(map(str, parts[: i + 1])), "no such list item")
                node = node[part]
                continue
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list) and (
            not isinstance(last, int) or not -len(node) <= last < len(node)
        ):
            raise ConfigError(".".join(map(str, parts)), "no such list item")
        node[last] = value
    return data


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML file (or a dict) and apply `key.path=value` overrides."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError("", f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError("", f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError("", f"{path}: the top level must be a mapping")
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
