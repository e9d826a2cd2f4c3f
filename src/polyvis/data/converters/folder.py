"""Any image folder + a CSV of questions -> records (your own data, no converter needed).

The CSV (UTF-8, header row) has the columns `image`, `question`, `answer` and optionally
`family`, `metric`, `id` and `split`:

    image,question,answer,family
    receipts/001.png,What is the total?,12.50,ocr
    charts/bar.png,Which bar is tallest?,B,chart

- `image` is relative to `images` (default: the CSV's folder) or absolute; an empty cell makes
  a text-only record.
- `family` / `metric` per row override the `family` / `metric` options. Metrics are checked when
  the records are evaluated (polyvis.eval), where an unknown one names the record.
- `id` (optional) must be unique; without it ids are `{prefix}-{split}-{row:06d}`.
- With a `split` column only the rows of `split` are kept; without one every row is kept.
One record per row; rows are not merged into multi-turn conversations.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import Field

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    nonempty,
    pick_split,
    require_file,
)
from polyvis.errors import DataError

REQUIRED = ("image", "question", "answer")


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each CSV row, header names stripped; required columns checked."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(
                    f"{path}: missing column '{missing[0]}' (header: {', '.join(header) or 'none'})"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:  # more cells than header names
                    raise DataError(f"{path}:{reader.line_num}: more cells than columns")
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: unreadable CSV ({err})") from None
    return rows


def rows_to_records(
    rows: list[tuple[int, dict[str, str]]], images: ImageResolver, params: FolderParams
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    records = []
    for n, row in rows:
        where = f"{params.csv}:{n}"
        for col in ("question", "answer"):
            if not row[col]:
                raise DataError(f"{where}: empty '{col}'")
        metric = row.get("metric") or params.metric
        image = None
        if row["image"]:
            image = images.path(row["image"], where)
            if image is None:
                continue
        rid = row.get("id") or f"{params.prefix}-{params.split}-{n:06d}"
        extra = {"metric": metric} if metric else {}
        family = row.get("family") or params.family
        records.append(make_record(rid, image, [(row["question"], row["answer"])], family, **extra))
    return records


class FolderParams(CommonParams):
    csv: Path = Field(description="CSV: image,question,answer[,family]")
    images: Path | None = Field(None, description="image folder (default: the CSV's)")
    family: str | None = Field(None, description="family of rows without a family cell")
    metric: str | None = Field(None, description="metric of rows without a metric cell")
    prefix: str = Field("folder", description="record id prefix")


@register_converter("folder", family="mixed", params=FolderParams)
def convert(params: FolderParams, out_dir: Path) -> list[dict[str, Any]]:
    """image folder + CSV (image, question, answer[, family]) -> records"""
    path = require_file(params.csv, "CSV file")
    rows = read_rows(path)
    if rows and "split" in rows[0][1]:
        rows = pick_split(((row["split"], (n, row)) for n, row in rows), params.split, path)
    if not rows:
        raise DataError(f"{path}: no rows")
    images = ImageResolver(params.images or path.parent, out_dir, params.allow_missing)
    records = rows_to_records(rows, images, params)
    return nonempty(records, path, images, params.limit)
