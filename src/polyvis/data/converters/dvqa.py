"""DVQA (bar-chart question answering) -> chart questions (family "chart", relaxed accuracy).

The released layout: `DVQA/images/*.png` and `DVQA/qa/{split}_qa.json` for the splits train,
val_easy and val_hard (test_familiar / test_novel likewise). Each QA file is a JSON list of
`{image, question, answer, question_id, template_id or question_type, ...}`.

One record per question, id `dvqa-{split}-{question_id}`; the question's template ("structure",
"data", "reasoning") is kept as `question_type` so results can be broken down by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    answer_text,
    field,
    json_list,
    nonempty,
)
from polyvis.errors import ConfigError, DataError


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


class DVQAParams(CommonParams):
    root: Path | None = Field(None, description="DVQA folder (images/, qa/)")
    qa: Path | None = Field(None, description="QA JSON (default root/qa/{split}_qa.json)")
    images: Path | None = Field(None, description="image folder (default root/images)")
    prefix: str = Field("dvqa", description="record id prefix")

    @model_validator(mode="after")
    def _has_inputs(self) -> DVQAParams:
        if self.root is None and (self.qa is None or self.images is None):
            raise ConfigError("root", "give the DVQA folder, or both qa and images")
        return self


@register_converter("dvqa", family="chart", params=DVQAParams)
def convert(params: DVQAParams, out_dir: Path) -> list[dict[str, Any]]:
    """DVQA bar-chart questions -> chart questions"""
    root = params.root
    qa_path = params.qa or root / "qa" / f"{params.split}_qa.json"
    images = ImageResolver(params.images or root / "images", out_dir, params.allow_missing)
    records = qa_to_records(qa_path, images, params.split, params.prefix)
    return nonempty(records, qa_path, images, params.limit)
