"""DVQA (bar-chart question answering) -> chart questions (family "chart", relaxed accuracy).

The released layout: `DVQA/images/*.png` and `DVQA/qa/{split}_qa.json` for the splits train,
val_easy and val_hard (test_familiar / test_novel likewise). Each QA file is a JSON list of
`{image, question, answer, question_id, template_id or question_type, ...}`.

One record per question, id `dvqa-{split}-{question_id}`; the question's template ("structure",
"data", "reasoning") is kept as `question_type` so results can be broken down by it.
"""

from __future__ import annotations

import argparse
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
)
from polyvis.errors import DataError


def qa_to_records(
    qa_path: Path, images: ImageResolver, split: str, prefix: str
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    records = []
    for i, entry in enumerate(json_list(qa_path, "DVQA questions file")):
        where = f"{qa_path}: entry {i}"
        qid = entry.get("question_id", i) if isinstance(entry, dict) else i
        question = field(entry, "question", where).strip()
        if not question:
            raise DataError(f"{where}: 'question' is empty")
        answer = answer_text(field(entry, "answer", where, (str, int, float)), where)
        path = images.path(field(entry, "image", where), where)
        if path is None:
            continue
        qtype = entry.get("question_type", entry.get("template_id"))
        extra = {"question_type": qtype} if qtype is not None else {}
        records.append(
            make_record(f"{prefix}-{split}-{qid}", path, [(question, answer)], "chart", **extra)
        )
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=None, help="DVQA folder (images/, qa/)")
    parser.add_argument(
        "--qa", type=Path, default=None, help="QA JSON (default root/qa/{split}_qa.json)"
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="image folder (default root/images)"
    )
    parser.add_argument("--prefix", default="dvqa", help="record id prefix")
    add_common_arguments(parser)


def convert(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    """The `polyvis data convert dvqa` entry point."""
    if args.root is None and (args.qa is None or args.images is None):
        raise DataError("--root: give the DVQA folder, or both --qa and --images")
    root = Path(args.root) if args.root is not None else None
    qa_path = Path(args.qa) if args.qa is not None else root / "qa" / f"{args.split}_qa.json"
    images = ImageResolver(args.images or root / "images", out_dir, args.allow_missing)
    records = qa_to_records(qa_path, images, args.split, args.prefix)
    nonempty(records, qa_path, images)
    return limited(records, args.limit)


CONVERTERS.add(
    "dvqa",
    Converter(
        name="dvqa",
        help="DVQA bar-chart questions -> chart questions",
        family="chart",
        add_arguments=add_arguments,
        convert=convert,
    ),
)
