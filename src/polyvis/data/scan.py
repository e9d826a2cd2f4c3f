"""Scan the records files under a folder: every record, its images, and what is wrong with it.

    from polyvis.data.scan import scan_records, split_stats
    scanned, problems = scan_records("data/nano")

`polyvis data inspect` prints `split_stats` as a table and the problems as lines; the preview
(polyvis.data.preview) picks its records from the same scan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.data.records import (
    read_records,
    record_id,
    record_image_paths,
    record_label,
    validate_record,
)
from polyvis.errors import DataError

__all__ = ["ScannedRecord", "SplitStats", "records_files", "scan_records", "split_stats"]


@dataclass
class ScannedRecord:
    """One record as found on disk; `images` is empty unless the record itself is valid."""

    file: Path
    family: str  # the record's "family", else its folder's name
    split: str  # the records file's stem
    record: Any
    images: list[Path]
    ok: bool


@dataclass
class SplitStats:
    """What one (family, split) holds: records, distinct image files, bad records."""

    records: int = 0
    images: set[Path] = field(default_factory=set)
    bad: int = 0


def records_files(path: str | Path) -> list[Path]:
    """`path` itself when it is a file, else every *.jsonl below it (sorted); DataError if none."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else []
    if not files:
        raise DataError(f"{path}: no *.jsonl records files found")
    return files


def scan_records(path: str | Path) -> tuple[list[ScannedRecord], list[str]]:
    """Every record of every records file under `path`, and the problems found.

    Problems are "file: id: what is wrong" lines (validation, duplicate ids, missing images), or a
    file's own error when it cannot be read at all.
    """
    scanned, bad = [], []
    for f in records_files(path):
        try:
            records = read_records(f, validate=False)
        except DataError as err:
            bad.append(str(err))
            continue
        # Only string and integer ids can be counted: a list or an object is its own problem.
        ids = Counter(rid for r in records if (rid := record_id(r)) is not None)
        for k, rec in enumerate(records):
            problems = validate_record(rec)
            rid = record_label(rec, k)
            images: list[Path] = []
            if isinstance(rec, dict):
                if record_id(rec) is not None and ids[rid] > 1:
                    problems.append("duplicate id")
                if not problems:
                    images = record_image_paths(rec, f.parent)
                    problems += [f"image not found: {p}" for p in images if not p.is_file()]
            family = rec.get("family") if isinstance(rec, dict) else None
            if not isinstance(family, str):  # a bad one is reported above; group by folder
                family = None
            scanned.append(
                ScannedRecord(f, family or f.parent.name, f.stem, rec, images, not problems)
            )
            if problems:
                bad.append(f"{f}: {rid}: {'; '.join(problems)}")
    return scanned, bad


def split_stats(scanned: list[ScannedRecord]) -> dict[tuple[str, str], SplitStats]:
    """Counts per (family, split), sorted by family then split."""
    stats: dict[tuple[str, str], SplitStats] = {}
    for r in scanned:
        s = stats.setdefault((r.family, r.split), SplitStats())
        s.records += 1
        s.images.update(r.images)
        s.bad += 0 if r.ok else 1
    return dict(sorted(stats.items()))
