"""Converters from real datasets into the one record format (polyvis.data.records).

A converter is one module of this package: a pydantic `Params` model (its options, each with a
type, a default unless required, and a description) and a `convert(params, out_dir)` function
registered with `register_converter`. Python calls it directly:

    from polyvis.data.converters import get_converter, run_converter
    conv = get_converter("chartqa")
    records = conv.convert(conv.params(root="ChartQA Dataset", split="val"), out_dir)
    path, records = run_converter("chartqa", out_dir, root="ChartQA Dataset", split="val")

`polyvis data convert KIND` gets one sub-command per registered converter, with one option per
`Params` field (`allow_missing` -> `--allow-missing`); the first line of `convert`'s docstring is
its help. docs/converters.md ("Adding a converter") shows a complete one. The contract:
- `Params` extends `ConverterParams` (which gives `split`), or `_util.CommonParams` for real data
  (adds `allow_missing` and `limit`); a field may not be named `out` (the CLI's output folder).
  Bad options raise a one-line ConfigError naming the field.
- `convert(params, out_dir)` returns the records (dicts from `make_record`). Image paths must be
  relative to `out_dir` (use `relative_image_path`) or absolute. Records should set `family`
  (and `metric` where it differs from the family's default). Ids must be unique, e.g.
  `f"{prefix}-{params.split}-{n:06d}"`. Unusable input raises `DataError` naming the file / field.
- `Converter.run` / `run_converter` validate the records (`check_records`) and write
  `out_dir/{split}.jsonl`; when that fails, the folders `run` made for out_dir are removed
  again if still empty (a folder that was there before is never touched).
- Keep heavy imports inside `convert`, so `polyvis --help` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from polyvis.errors import config_error_from
from polyvis.registry import registry

CONVERTERS = registry("converter")

Records = list[dict[str, Any]]


class ConverterParams(BaseModel):
    """The options every converter takes. Building one validates it: a bad value raises a
    one-line ConfigError naming the field."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field("train", description="split name: writes OUT/SPLIT.jsonl")

    @field_validator("split")
    @classmethod
    def _a_file_name(cls, value: str) -> str:
        # a file name inside OUT: no separators or leading dot, so '../x' cannot write elsewhere
        if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", value):
            raise ValueError(f"a file name of letters, digits and _ . + - is needed, got {value!r}")
        return value

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise config_error_from(err) from None


@dataclass(frozen=True)
class Converter:
    """A registered converter: its name, one-line help, default family, options and function."""

    name: str
    help: str
    family: str
    params: type[ConverterParams]
    convert: Callable[[Any, Path], Records]

    def run(self, params: ConverterParams, out_dir: str | Path) -> tuple[Path, Records]:
        """Convert, check the records and write them to out_dir/{split}.jsonl; return the file
        and the records."""
        from polyvis.data.records import check_records, write_records

        out_dir = Path(out_dir)
        made = _missing_folders(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            records = check_records(self.convert(params, out_dir), f"{self.name} converter output")
            return write_records(out_dir / f"{params.split}.jsonl", records), records
        except BaseException:  # Ctrl-C too: a failed conversion leaves no empty OUT behind
            _remove_empty(made)
            raise


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first (what mkdir would make)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) while they are empty; rmdir never removes a file, so
    a folder someone else wrote into meanwhile stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def register_converter(
    name: str, family: str, params: type[ConverterParams], help: str | None = None
) -> Callable[[Callable[[Any, Path], Records]], Callable[[Any, Path], Records]]:
    """Decorator: register `convert(params, out_dir)` as the converter `name`; its one-line help
    is `help`, else the first line of the function's docstring."""

    def deco(convert: Callable[[Any, Path], Records]) -> Callable[[Any, Path], Records]:
        text = help or (inspect.getdoc(convert) or "").split("\n")[0]
        CONVERTERS.add(name, Converter(name, text, family, params, convert))
        return convert

    return deco


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


def run_converter(name: str, out_dir: str | Path, /, **options: Any) -> tuple[Path, Records]:
    """Run converter `name` with `options` (its Params fields) into out_dir/{split}.jsonl."""
    conv = get_converter(name)
    return conv.run(conv.params(**options), out_dir)


def relative_image_path(image: str | Path, out_dir: str | Path) -> str:
    """Image path as stored in a record written to out_dir: relative to it, with '/' separators."""
    rel = os.path.relpath(Path(image).absolute(), Path(out_dir).absolute())
    return Path(rel).as_posix()


__all__ = [
    "CONVERTERS",
    "Converter",
    "ConverterParams",
    "get_converter",
    "load_converters",
    "register_converter",
    "relative_image_path",
    "run_converter",
]


# Importing the package registers every converter, so the registry's discovery finds them all.
load_converters()
