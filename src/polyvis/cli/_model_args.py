"""Options shared by the commands that load a model (chat, eval, serve, export) and their checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DTYPES = ["float32", "bfloat16", "float16"]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as `load_cli_model` reads them."""
    parser.add_argument(
        "--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if any)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default=None)


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory as given, or a run directory's final/ model (as train.init_from takes).

    A run directory whose training has not finished (config.yaml, no final/) is a ConfigError
    that says so, rather than the loader's "no config.json".
    """
    from polyvis.errors import ConfigError

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if (path / "config.yaml").is_file():
        raise ConfigError(
            "", f"{path}: a run directory without a final/ model (has its training finished?)"
        )
    return path  # the loader's own error names what is missing


def load_cli_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, processor) from args.model (a model or run directory) on args.device (default:
    cuda when there is one)."""
    from polyvis.models.build import load_model

    device = resolve_device(args.device)
    return load_model(str(resolve_model_dir(args.model)), dtype=args.dtype, device=device)


def resolve_device(value: str | None) -> str:
    """--device checked before any model loads (default: cuda when there is one, else cpu); a
    name torch does not know, or a GPU this machine lacks, is a ConfigError naming --device."""
    import torch

    from polyvis.errors import ConfigError

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(
            "--device", f"{value!r} is not a device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("--device", f"{value!r}: no CUDA GPU here (use cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError("--device", f"{value!r}: this machine has {count} CUDA GPU(s)")
    return value


def require_at_least_one(values: dict[str, int | None]) -> None:
    """ConfigError naming the first option (flag -> value) below 1; None means not given."""
    from polyvis.errors import ConfigError

    for flag, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(flag, f"must be at least 1, got {value}")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The commands' `--set KEY=VALUE ...` (dotted config overrides); extend: a repeated --set
    adds to the earlier ones instead of replacing them."""
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted overrides (several after one --set, or --set repeated)")  # fmt: skip
