"""TextCaps -> captions that must read the text in the image (family "ocr", metric "cider").

`TextCaps_0.1_{train,val}.json` is `{"dataset_type", ..., "data": [entry, ...]}` with one entry
per caption: `{image_id, image_path, image_name, set_name, caption_id, caption_str,
reference_strs: [all captions of the image], ...}`; the images are TextVQA's (`train_images/`).
An entry's image is looked up as `images/image_path`, then by its base name (TextVQA keeps the
images flat), then as `{image_id}.jpg`.

Default: one record per image, answer = its first caption, `references` = all its captions (CIDEr
is meant to be scored against all of them). `per_caption`: one record per caption (training).
`split` matches the entries' `set_name` (else the file's `dataset_type`). The test file has
no captions, so it cannot be converted.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from pydantic import Field

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    field,
    load_json,
    nonempty,
    pick_split,
)
from polyvis.errors import DataError

QUESTION = "Describe the image, including any text in it."


def captions(entry: dict[str, Any], where: str) -> tuple[str, list[str]]:
    """(this entry's caption, all reference captions of its image)."""
    refs = entry.get("reference_strs")
    refs = (
        [" ".join(r.split()) for r in refs if isinstance(r, str) and r.strip()]
        if isinstance(refs, list)
        else []
    )
    own = entry.get("caption_str")
    own = " ".join(own.split()) if isinstance(own, str) and own.strip() else None
    if own is None and not refs:
        raise DataError(
            f"{where}: has no 'caption_str' or 'reference_strs' (test annotations have none)"
        )
    own = own or refs[0]
    return own, refs or [own]


def image_names(entry: dict[str, Any], where: str) -> list[str]:
    """Where the entry's image may be, relative to the images folder, best guess first."""
    path = entry.get("image_path")
    if isinstance(path, str) and path:
        base = posixpath.basename(path)
        return [path] if base == path else [path, base]
    return [f"{field(entry, 'image_id', where, (str, int))}.jpg"]


def entries_to_records(
    entries: list[tuple[int, dict[str, Any]]],
    images: ImageResolver,
    split: str,
    prefix: str,
    per_caption: bool,
    source: Path,
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    records, seen = [], set()
    for i, entry in entries:
        where = f"{source}: data[{i}]"
        image_id = field(entry, "image_id", where, (str, int))
        where = f"{source}: data[{i}] (image_id {image_id})"
        if not per_caption and image_id in seen:
            continue
        seen.add(image_id)
        own, refs = captions(entry, where)
        names = image_names(entry, where)
        path = images.path(names[0], where, *names[1:])
        if path is None:
            continue
        rid = f"{prefix}-{split}-{image_id}"
        if per_caption:
            rid += f"-{entry.get('caption_id', i)}"
        records.append(
            make_record(
                rid,
                path,
                [(QUESTION, own)],
                "ocr",
                metric="cider",
                task="caption",
                references=refs,
            )
        )
    return records


class TextCapsParams(CommonParams):
    annotations: Path = Field(description="TextCaps_0.1_{split}.json")
    images: Path = Field(description="TextVQA image folder")
    per_caption: bool = Field(False, description="one record per caption")
    prefix: str = Field("textcaps", description="record id prefix")


@register_converter("textcaps", family="ocr", params=TextCapsParams)
def convert(params: TextCapsParams, out_dir: Path) -> list[dict[str, Any]]:
    """TextCaps captions -> text-aware captioning (family ocr, CIDEr)"""
    path = params.annotations
    data = load_json(path, "TextCaps annotations")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected an object with a 'data' list")
    default_split = data.get("dataset_type", params.split)
    for i, e in enumerate(data["data"]):
        if not isinstance(e, dict):
            raise DataError(f"{path}: data[{i}] is a {type(e).__name__}, not an object")
    entries = pick_split(
        (((e.get("set_name") or default_split), (i, e)) for i, e in enumerate(data["data"])),
        params.split,
        path,
    )
    images = ImageResolver(params.images, out_dir, params.allow_missing)
    records = entries_to_records(
        entries, images, params.split, params.prefix, params.per_caption, path
    )
    return nonempty(records, path, images, params.limit)
