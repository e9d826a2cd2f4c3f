"""ChartQA -> chart questions (family "chart", metric relaxed accuracy).

The released layout (`ChartQA Dataset/`), one folder per split (train, val, test):
- `{split}/png/{imgname}`: the chart images;
- `{split}/{split}_human.json` and `{split}/{split}_augmented.json`: JSON lists of
  `{imgname, query, label}` (human-written and machine-generated questions);
- `{split}/tables/{name}.csv`: the data table behind each chart.

One record per question; `source` says "human" or "augmented" (ChartQA reports them separately).
With `--tables`, each image also gets "Give the data as a table." -> the CSV rows, cells joined by
" | " and rows by newlines (the synthetic chart family's table format; metric edit_similarity).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from polyvis.data.converters import CONVERTERS, Converter
from polyvis.data.converters._util import (
    ImageResolver,
    add_common_arguments,
    answer_text,
    field,
    json_list,
    limited,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="the 'ChartQA Dataset' folder")
    parser.add_argument(
        "--subsets", default=",".join(SUBSETS), help="comma-separated: human, augmented"
    )
    parser.add_argument(
        "--tables", action="store_true", help="also ask for each chart's data table"
    )
    parser.add_argument("--prefix", default="chartqa", help="record id prefix")
    add_common_arguments(parser)


def convert(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    """The `polyvis data convert chartqa` entry point."""
    subsets = [s for s in str(args.subsets).split(",") if s]
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown or not subsets:
        bad = unknown[0] if unknown else args.subsets
        raise DataError(f"--subsets: unknown subset {bad!r}; valid: {', '.join(SUBSETS)}")
    split_dir = require_dir(Path(args.root) / args.split, f"ChartQA split folder {args.split!r}")
    images = ImageResolver(split_dir / "png", out_dir, args.allow_missing)
    records: list[dict[str, Any]] = []
    for subset in subsets:
        qa_path = split_dir / f"{args.split}_{subset}.json"
        records += subset_records(qa_path, subset, images, args.split, args.prefix)
    nonempty(records, split_dir, images)
    if args.tables:
        records += table_records(records, split_dir / "tables", args.split, args.prefix)
    return limited(records, args.limit)


CONVERTERS.add(
    "chartqa",
    Converter(
        name="chartqa",
        help="ChartQA human/augmented questions (+ data tables) -> chart questions",
        family="chart",
        add_arguments=add_arguments,
        convert=convert,
    ),
)
