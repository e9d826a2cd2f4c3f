"""Turn a `{type: name, ...options}` dict into a validated options object of a registered class."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from polyvis.errors import ConfigError, config_error_from
from polyvis.registry import Registry


def pydantic_error_to_config_error(err: ValidationError, prefix: str) -> ConfigError:
    """The first error of a pydantic ValidationError as one line naming the dotted field."""
    return config_error_from(err, prefix)


def resolve_typed(reg: Registry, cfg: dict[str, Any] | BaseModel, field: str) -> tuple[type, Any]:
    """Look up cfg['type'] in `reg` and validate the rest against the class's `Params` model."""
    if isinstance(cfg, BaseModel):
        cfg = cfg.model_dump()
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{field}.type", f"missing; valid: {', '.join(reg.names())}")
    name = cfg["type"]
    if name not in reg:
        raise ConfigError(
            f"{field}.type", f"unknown {reg.kind} {name!r}; valid: {', '.join(reg.names())}"
        )
    cls = reg.get(name)
    try:
        params = cls.Params(**cfg)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
            # e.g. `--set model.fusion.type=concat-sequence` over a config whose fusion had
            # `align`: say which options this type does take
            known = ", ".join(k for k in cls.Params.model_fields if k != "type") or "none"
            raise ConfigError(
                f"{field}.{first['loc'][0]}",
                f"{reg.kind} {name!r} takes no such option; its options: {known}",
            ) from None
        raise pydantic_error_to_config_error(err, field) from None
    return cls, params
