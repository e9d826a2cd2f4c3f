"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions -> grounding questions with box answers.

Input is the refer toolkit's layout (github.com/lichengunc/refer) with its pickle exported to JSON:
`refs(unc).p` is a pickle, which polyvis does not load (unpickling runs arbitrary code), so export it
once with `json.dump(pickle.load(open("refs(unc).p", "rb")), open("refs.json", "w"))`:

- `--refs refs.json`: a JSON list of `{ref_id, image_id, ann_id, split, sentences: [{sent}, ...]}`
  (other fields such as `category_id`, `file_name`, `sent_ids` are ignored; a sentence without
  `sent` falls back to `raw`);
- `--instances instances.json`: the COCO instances file shipped with the refs (boxes from
  `annotations[ann_id].bbox`, image file names from `images`);
- `--images`: the COCO image folder (`train2014/`).

One record per sentence: 'Where is "man in red"? Answer with a box [x1, y1, x2, y2].' ->
"[12, 40, 96, 200]" in pixel ints (the COCO converter's `box_text`), family "scene", metric
"box_accuracy" (IoU >= 0.5). `split` selects the refs' `split` (train, val, testA, testB, test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    field,
    json_list,
    nonempty,
    pick_split,
)
from polyvis.errors import DataError

QUESTION = 'Where is "{sent}"? Answer with a box [x1, y1, x2, y2].'


def sentences(ref: dict[str, Any], where: str) -> list[str]:
    """The referring expressions of one ref, stripped, in file order."""
    sents = field(ref, "sentences", where, list)
    out = []
    for k, s in enumerate(sents):
        text = (s.get("sent") or s.get("raw")) if isinstance(s, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: sentences[{k}] has no 'sent' text")
        out.append(" ".join(text.split()))
    if not out:
        raise DataError(f"{where}: 'sentences' is empty")
    return out


def refs_to_records(
    refs: list[Any],
    coco: dict[str, Any],
    images: ImageResolver,
    split: str,
    prefix: str,
    refs_path: Path,
) -> list[dict[str, Any]]:
    """Records for the refs of `split`; boxes and file names come from the COCO dict."""
    from polyvis.data.converters.coco import box_text
    from polyvis.data.records import make_record

    files = {im["id"]: im["file_name"] for im in coco["images"]}
    anns = {a["id"]: a for a in coco["annotations"] if "id" in a}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    chosen = pick_split(
        ((r.get("split") if isinstance(r, dict) else None, (i, r)) for i, r in enumerate(refs)),
        split,
        refs_path,
    )
    records = []
    for i, ref in chosen:
        where = f"{refs_path}: refs[{i}]"
        ref_id = field(ref, "ref_id", where, (int, str))
        where = f"{refs_path}: ref_id {ref_id}"
        ann_id = field(ref, "ann_id", where, (int, str))
        image_id = field(ref, "image_id", where, (int, str))
        if ann_id not in anns:
            raise DataError(f"{where}: ann_id {ann_id} is not in the instances file")
        ann = anns[ann_id]
        if ann["image_id"] != image_id:
            raise DataError(
                f"{where}: ann_id {ann_id} belongs to image {ann['image_id']}, not {image_id}"
            )
        if image_id not in files:
            raise DataError(f"{where}: image_id {image_id} is not in the instances file")
        path = images.path(files[image_id], where)
        if path is None:
            continue
        answer = box_text(ann["bbox"])
        for k, sent in enumerate(sentences(ref, where)):
            records.append(
                make_record(
                    f"{prefix}-{split}-{ref_id}-{k}",
                    path,
                    [(QUESTION.format(sent=sent), answer)],
                    "scene",
                    metric="box_accuracy",
                    task="grounding",
                    ref_id=ref_id,
                    category=names.get(ann["category_id"]),
                )
            )
    return records


class RefCOCOParams(CommonParams):
    refs: Path = Field(description="refs(...).p exported as JSON")
    instances: Path = Field(description="COCO instances.json")
    images: Path = Field(description="COCO image folder")
    prefix: str = Field("refcoco", description="record id prefix (refcoco+, ...)")


@register_converter("refcoco", family="scene", params=RefCOCOParams)
def convert(params: RefCOCOParams, out_dir: Path) -> list[dict[str, Any]]:
    """RefCOCO/+/g refs (JSON export) + COCO instances -> grounding with box answers"""
    from polyvis.data.converters.coco import load_coco

    refs = json_list(params.refs, "refs JSON", key="refs")
    coco = load_coco(params.instances)
    images = ImageResolver(params.images, out_dir, params.allow_missing)
    records = refs_to_records(refs, coco, images, params.split, params.prefix, params.refs)
    return nonempty(records, params.refs, images, params.limit)
