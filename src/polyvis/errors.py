"""Errors polyvis raises on purpose: each carries a one-line message that names the problem."""

from __future__ import annotations

from typing import Any


class PolyVisError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(PolyVisError, ValueError):
    """A config value is wrong; the message starts with the dotted field name."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message  # without the field: for re-raising under another field's name
        super().__init__(f"{field}: {message}" if field else message)


class RegistryError(PolyVisError, KeyError):
    """Unknown or duplicate registry key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class DataError(PolyVisError, ValueError):
    """A record, file or image is unusable; the message names the record id or file."""


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


def config_error_from(err: Any, prefix: str = "") -> ConfigError:
    """The first problem of a pydantic ValidationError as a ConfigError naming its dotted field
    (`prefix` + the field inside the validated object); a ConfigError that a validator raised
    itself is passed on as it is."""
    first = err.errors()[0]
    original = first.get("ctx", {}).get("error")
    if isinstance(original, ConfigError):
        return original
    inner = field_name(first["loc"])
    if prefix and inner:
        field = f"{prefix}{inner}" if inner.startswith("[") else f"{prefix}.{inner}"
    else:
        field = prefix or inner
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    return ConfigError(field, msg.removeprefix("Value error, "))
