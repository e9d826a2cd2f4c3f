"""ChartQA -> chart questions (family "chart", metric relaxed accuracy).

The released layout (`ChartQA Dataset/`), one folder per split (train, val, test):
- `{split}/png/{imgname}`: the chart images;
- `{split}/{split}_human.json` and `{split}/{split}_augmented.json`: JSON lists of
  `{imgname, query, label}` (human-written and machine-generated questions);
- `{split}/tables/{name}.csv`: the data table behind each chart.

One record per question; `source` says "human" or "augmented" (ChartQA reports them separately).
With `tables`, each image also gets "Give the data as a table." -> the CSV rows, cells joined by
" | " and rows by newlines (the synthetic chart family's table format; metric edit_similarity).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    answer_text,
    comma_choices,
    field,
    json_list,
    nonempty,
    require_dir,
)
from polyvis.errors import DataError

SUBSETS = ("human", "augmented")
TABLE_QUESTION = "Give the data as a table."  # as in the synthetic chart family


def table_text(path: Path) -> str:
    """A ChartQA CSV as 'cell | cell' lines; DataError naming the file when it is unusable."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = [
                [c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: unreadable table ({err})") from None
    if not rows:
        raise DataError(f"{path}: empty table")
    return "\n".join(" | ".join(row) for row in rows)


def subset_records(
    qa_path: Path, subset: str, images: ImageResolver, split: str, prefix: str
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    records = []
    for i, entry in enumerate(json_list(qa_path, f"ChartQA {subset} questions")):
        where = f"{qa_path}: entry {i}"
        name = field(entry, "imgname", where)
        question = field(entry, "query", where).strip()
        if not question:
            raise DataError(f"{where}: 'query' is empty")
        answer = answer_text(field(entry, "label", where, (str, int, float)), where)
        path = images.path(name, where)
        if path is None:
            continue
        rid = f"{prefix}-{split}-{subset}-{i:06d}"
        records.append(make_record(rid, path, [(question, answer)], "chart", source=subset))
    return records


def table_records(
    records: list[dict[str, Any]], tables_dir: Path, split: str, prefix: str
) -> list[dict[str, Any]]:
    """One table-transcription record per distinct image among `records`."""
    from polyvis.data.records import make_record

    out, seen = [], set()
    for rec in records:
        image = rec["image"]
        if image in seen:
            continue
        seen.add(image)
        stem = Path(image).stem
        csv_path = tables_dir / f"{stem}.csv"
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: table not found (for image {image})")
        out.append(
            make_record(
                f"{prefix}-{split}-table-{stem}",
                image,
                [(TABLE_QUESTION, table_text(csv_path))],
                "chart",
                metric="edit_similarity",
                source="table",
            )
        )
    return out


class ChartQAParams(CommonParams):
    root: Path = Field(description="the 'ChartQA Dataset' folder")
    subsets: tuple[str, ...] = Field(SUBSETS, description="comma-separated: human, augmented")
    tables: bool = Field(False, description="also ask for each chart's data table")
    prefix: str = Field("chartqa", description="record id prefix")

    @field_validator("subsets", mode="before")
    @classmethod
    def _known_subsets(cls, value: Any) -> Any:
        return comma_choices(value, SUBSETS, "subset")


@register_converter("chartqa", family="chart", params=ChartQAParams)
def convert(params: ChartQAParams, out_dir: Path) -> list[dict[str, Any]]:
    """ChartQA human/augmented questions (+ data tables) -> chart questions"""
    split = params.split
    split_dir = require_dir(params.root / split, f"ChartQA split folder {split!r}")
    images = ImageResolver(split_dir / "png", out_dir, params.allow_missing)
    records: list[dict[str, Any]] = []
    for subset in params.subsets:
        qa_path = split_dir / f"{split}_{subset}.json"
        records += subset_records(qa_path, subset, images, split, params.prefix)
    records = nonempty(records, split_dir, images)
    if params.tables:
        records += table_records(records, split_dir / "tables", split, params.prefix)
    return records[: params.limit]
