"""Helpers shared by the real-data converters: common options, reading files, checking images,
split filters.

Every data error is a DataError whose message starts with the file (and the entry) at fault.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeInt

from polyvis.data.converters import ConverterParams, relative_image_path
from polyvis.errors import DataError


class CommonParams(ConverterParams):
    """The options every real-data converter takes."""

    allow_missing: bool = Field(False, description="drop entries whose image file is missing")
    limit: NonNegativeInt | None = Field(None, description="keep at most N records")


def comma_choices(value: Any, valid: Sequence[str], what: str, allow_empty: bool = False) -> Any:
    """A field validator's body: names as a comma-separated string (the CLI's form) or a
    sequence, each one of `valid`, as a tuple; ValueError naming the first unknown one."""
    names = [s for s in value.split(",") if s] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        return value  # pydantic reports the wrong type
    unknown = [s for s in names if s not in valid]
    if unknown or not (names or allow_empty):
        bad = unknown[0] if unknown else value
        raise ValueError(f"unknown {what} {bad!r}; valid: {', '.join(valid)}")
    return tuple(names)


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path; DataError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found")
    return path


def utf8_text(data: bytes, where: str | Path) -> str:
    """An annotation file's bytes (or one line's) as text; a DataError naming `where` when they
    are not UTF-8 (a byte-order mark is dropped), instead of a UnicodeDecodeError traceback."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None


def load_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; DataError naming the file when it is missing or invalid."""
    path = require_file(path, what)
    text = utf8_text(path.read_bytes(), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def json_list(path: str | Path, what: str, key: str | None = None) -> list[Any]:
    """A JSON file holding a list (or an object whose `key` holds the list)."""
    data = load_json(path, what)
    if key is not None and isinstance(data, dict) and key in data:
        data = data[key]
    if not isinstance(data, list):
        where = f"a list under '{key}'" if key else "a JSON list"
        raise DataError(f"{path}: expected {where}")
    return data


def field(entry: Any, name: str, where: str, types: type | tuple[type, ...] = str) -> Any:
    """entry[name], which must exist and have one of `types`; DataError naming `where`."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: is a {type(entry).__name__}, not an object")
    if name not in entry or entry[name] is None:
        raise DataError(f"{where}: has no '{name}'")
    value = entry[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise DataError(f"{where}: '{name}' is a {type(value).__name__}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def answer_text(value: Any, where: str) -> str:
    """An answer label as text: strings stripped, 12.0 -> "12", other numbers as written."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DataError(f"{where}: answer {value!r} is not a non-empty string or number")


class ImageResolver:
    """Turns image names in a dataset into record paths relative to out_dir, checking they exist.

    Missing files raise DataError naming the file and the entry, unless allow_missing (then
    `path` returns None and the caller drops the entry; `missing` counts them).
    """

    def __init__(self, images_dir: str | Path, out_dir: Path, allow_missing: bool = False):
        self.dir = require_dir(images_dir, "images folder")
        self.out_dir = out_dir
        self.allow_missing = allow_missing
        self.missing = 0
        # One relpath for the folder, then cheap joins: datasets have ~100k images.
        self._rel = relative_image_path(self.dir, out_dir)

    def path(self, name: str, where: str, *fallbacks: str) -> str | None:
        """Record path of images_dir/name (or the first fallback name that exists)."""
        for candidate in (name, *fallbacks):
            if (self.dir / candidate).is_file():
                rel = Path(candidate).as_posix()
                return rel if Path(candidate).is_absolute() else posixpath.join(self._rel, rel)
        if self.allow_missing:
            self.missing += 1
            return None
        raise DataError(
            f"{self.dir / name}: image file not found ({where}; --allow-missing drops such entries)"
        )


def pick_split(entries: Iterable[tuple[str, Any]], split: str, source: str | Path) -> list[Any]:
    """The entries whose split is `split`; DataError listing the splits present when none match."""
    seen: set[str] = set()
    kept = []
    for s, entry in entries:
        seen.add(str(s))
        if str(s) == split:
            kept.append(entry)
    if not kept:
        found = ", ".join(sorted(seen)) or "none"
        raise DataError(f"{source}: no entries for split {split!r} (splits present: {found})")
    return kept


def nonempty(
    records: list[dict[str, Any]],
    source: str | Path,
    resolver: ImageResolver,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The first `limit` records (all by default); DataError when every entry was dropped (e.g.
    all images missing with allow_missing)."""
    if not records:
        why = (
            f"all {resolver.missing} image(s) missing" if resolver.missing else "no usable entries"
        )
        raise DataError(f"{source}: no records ({why})")
    return records[:limit]
