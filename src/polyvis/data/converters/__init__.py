"""Converters from real datasets into the one record format (polyvis.data.records).

How to add one (e.g. im2latex): create `src/polyvis/data/converters/im2latex.py` with

    from polyvis.data.converters import CONVERTERS, Converter

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--formulas", type=Path, required=True, help="...")

    def convert(args: argparse.Namespace, out_dir: Path) -> list[dict]:
        ...  # build records with polyvis.data.records.make_record
        return records

    CONVERTERS.add("im2latex", Converter("im2latex", "im2latex-100k formulas", "latex",
                                         add_arguments, convert))

Nothing else to edit: `load_converters()` imports every module of this package, and
`polyvis data convert KIND ...` gets one sub-command per registered converter.

The contract:
- `add_arguments(parser)` adds the converter's own options. The CLI already adds `--out DIR`
  (required) and `--split NAME` (default "train"); do not add those again.
- `convert(args, out_dir)` returns the records (dicts from `make_record`). Image paths must be
  relative to `out_dir` (use `relative_image_path`) or absolute. Records should set `family`
  (and `metric` where it differs from the family's default). Ids must be unique, e.g.
  `f"{kind}-{args.split}-{n:06d}"`. Unusable input raises `DataError` naming the file / field.
- The CLI validates the records (`check_records`) and writes `out_dir/{split}.jsonl`.
- Keep heavy imports inside `convert`, so `polyvis --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyvis.registry import registry

CONVERTERS = registry("converter")


@dataclass(frozen=True)
class Converter:
    """A registered converter: its name, one-line help, default family and the two hooks."""

    name: str
    help: str
    family: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    convert: Callable[[argparse.Namespace, Path], list[dict[str, Any]]]


def load_converters() -> list[str]:
    """Import every converter module of this package (each registers itself); return the names."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return CONVERTERS.names()


def get_converter(name: str) -> Converter:
    """The converter registered as `name` (unknown names list the valid ones)."""
    load_converters()
    return CONVERTERS.get(name)


def relative_image_path(image: str | Path, out_dir: str | Path) -> str:
    """Image path as stored in a record written to out_dir: relative to it, with '/' separators."""
    rel = os.path.relpath(Path(image).absolute(), Path(out_dir).absolute())
    return Path(rel).as_posix()


__all__ = ["CONVERTERS", "Converter", "get_converter", "load_converters", "relative_image_path"]
