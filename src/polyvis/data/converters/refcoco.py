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

One record per sentence: 'Where is "man in red"? Answer with a box [x1, y1, x2, y2] in 0-1000
coordinates.' -> "[19, 83, 150, 417]" (of a 640 x 480 image): the box in integers 0..1000 of its
width and height (`--box-format norm1000`, the default; the record carries `"box_format":
"norm1000"`). With `--box-format pixels`: 'Where is "man in red"? Answer with a box [x1, y1, x2,
y2].' -> "[12, 40, 96, 200]" in pixel ints (the COCO converter's `box_text`). Family "scene",
metric "box_accuracy" (IoU >= 0.5). `split` selects the refs' `split` (train, val, testA, testB,
test). For norm1000 the image size comes from the instances' `images` entry, else from the image
file; a ref whose image has neither is skipped (a note on stderr counts them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from polyvis.data.boxes import BoxFormat, box_prompt
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

QUESTION = 'Where is "{sent}"? {prompt}'


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
    box_format: str = "pixels",
) -> list[dict[str, Any]]:
    """Records for the refs of `split`; boxes and file names come from the COCO dict."""
    from polyvis.data.converters.coco import box_text, image_size
    from polyvis.data.records import make_record

    entries = {im["id"]: im for im in coco["images"]}
    files = {k: im["file_name"] for k, im in entries.items()}
    sizes: dict[Any, tuple[float, float] | None] = {}
    unsized = 0
    prompt = box_prompt(box_format)
    extra = {} if box_format == "pixels" else {"box_format": box_format}  # absent means pixels
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
        size = None
        if box_format != "pixels":  # pixel boxes need no size
            if image_id not in sizes:
                sizes[image_id] = image_size(entries[image_id], images.dir / files[image_id])
            size = sizes[image_id]
            if size is None:
                unsized += 1
                continue
        answer = box_text(ann["bbox"], box_format, size)
        for k, sent in enumerate(sentences(ref, where)):
            records.append(
                make_record(
                    f"{prefix}-{split}-{ref_id}-{k}",
                    path,
                    [(QUESTION.format(sent=sent, prompt=prompt), answer)],
                    "scene",
                    metric="box_accuracy",
                    task="grounding",
                    ref_id=ref_id,
                    category=names.get(ann["category_id"]),
                    **extra,
                )
            )
    if unsized and not records:
        raise DataError(f"{refs_path}: no records ({unsized} image(s) without a size)")
    if unsized:
        print(
            f"{refs_path}: skipped {unsized} ref(s) whose image has no width/height and an "
            "unreadable file",
            file=sys.stderr,
        )
    return records


class RefCOCOParams(CommonParams):
    refs: Path = Field(description="refs(...).p exported as JSON")
    instances: Path = Field(description="COCO instances.json")
    images: Path = Field(description="COCO image folder")
    prefix: str = Field("refcoco", description="record id prefix (refcoco+, ...)")
    # norm1000 by default: COCO images come in mixed sizes the model only sees resized, so only
    # coordinates relative to the image can be learnt consistently
    box_format: BoxFormat = Field(
        "norm1000", description="boxes in image pixels or 0-1000 of width/height"
    )


@register_converter("refcoco", family="scene", params=RefCOCOParams)
def convert(params: RefCOCOParams, out_dir: Path) -> list[dict[str, Any]]:
    """RefCOCO/+/g refs (JSON export) + COCO instances -> grounding with box answers"""
    from polyvis.data.converters.coco import load_coco

    refs = json_list(params.refs, "refs JSON", key="refs")
    coco = load_coco(params.instances, need_size=False)  # sizes missing there come from the files
    images = ImageResolver(params.images, out_dir, params.allow_missing)
    records = refs_to_records(
        refs, coco, images, params.split, params.prefix, params.refs, params.box_format
    )
    return nonempty(records, params.refs, images, params.limit)
