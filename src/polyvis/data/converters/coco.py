"""COCO instances JSON -> spatial captions, relations, grounding, counting and colour questions.

Used for real COCO-format data (`polyvis data convert coco ...`) and by the synthetic scene
family, which writes COCO first. Per image, one single-turn record per task:

- caption:   "Describe the image." -> "a red circle at the top left, a blue square on the right"
             (metric "cider"; objects in reading order; position = which third of the image
             holds the box centre)
- relation:  "Is the red circle left of the blue square?" -> "yes" / "no" (left of, right of,
             above, below; only pairs whose centres are >= 10 % of the image apart on that axis)
- grounding: "Where is the red circle? Answer with a box [x1, y1, x2, y2]." -> "[3, 5, 20, 22]"
             (pixel ints: x1 = round(x), y1 = round(y), x2 = round(x + w), y2 = round(y + h);
             metric "box_accuracy"). With box_format "norm1000" (the CLI's default) the question
             ends "... in 0-1000 coordinates.", the corners are round(x / width * 1000), ... and
             the record carries `"box_format": "norm1000"`.
- count:     "How many circles?" -> "2" (sometimes a category absent from the image -> "0")
- attribute: "What colour is the square?" -> "red" (only when exactly one object has that
             category and the annotation has `attributes: {"color": ...}`)

Relation, grounding and attribute questions only name objects whose description ("red circle",
or the category name when there is no colour) is unique in the image, so every answer is
determined. Crowd annotations are skipped. Which question is asked comes from a generator seeded
by (seed, image id), so the output is deterministic.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, NonNegativeInt, field_validator

from polyvis.data.boxes import BoxFormat, box_prompt, check_box_format, to_norm1000
from polyvis.data.converters import ConverterParams, register_converter, relative_image_path
from polyvis.data.converters._util import comma_choices, utf8_text
from polyvis.data.records import make_record
from polyvis.errors import DataError

TASKS: tuple[str, ...] = ("caption", "relation", "grounding", "count", "attribute")
CAPTION_PROMPT = "Describe the image."
BOX_RE = re.compile(r"^\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]\s*$")
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
_IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep"}
_ALREADY_PLURAL = {"skis", "scissors", "glasses", "pants"}


def box_text(
    bbox: list[float], box_format: str = "pixels", size: tuple[float, float] | None = None
) -> str:
    """COCO [x, y, w, h] -> the answer text "[x1, y1, x2, y2]" in pixel ints, or in norm1000
    ints of the image's `size` (width, height)."""
    x, y, w, h = (float(v) for v in bbox)
    if check_box_format(box_format) == "norm1000":
        if size is None:
            raise ValueError("box_text: norm1000 needs the image size")
        return "[{}, {}, {}, {}]".format(*to_norm1000((x, y, x + w, y + h), *size))
    x1, y1 = round(x), round(y)
    # an object under a pixel wide would round to a box of no area, which no answer can match
    x2, y2 = max(round(x + w), x1 + 1), max(round(y + h), y1 + 1)
    return f"[{x1}, {y1}, {x2}, {y2}]"


def parse_box(text: str) -> list[int] | None:
    """ "[x1, y1, x2, y2]" -> [x1, y1, x2, y2]; None when text is not exactly such a box."""
    m = BOX_RE.match(text)
    return [int(g) for g in m.groups()] if m else None


def image_size(entry: dict[str, Any], path: str | Path) -> tuple[float, float] | None:
    """(width, height) of a COCO `images` entry, read from the image file when the entry has no
    positive ones; None when neither gives it (the caller skips the image)."""
    w, h = entry.get("width"), entry.get("height")
    if all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        return float(w), float(h)
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return float(im.width), float(im.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def position_phrase(cx: float, cy: float, width: float, height: float) -> str:
    """Where a point is, in words: 'at the top left', 'on the right', 'in the centre', ..."""
    row = _ROWS[min(2, int(3 * cy / height))]
    col = _COLS[min(2, int(3 * cx / width))]
    if row == "middle":
        return "in the centre" if col == "centre" else f"on the {col}"
    return f"at the {row}" if col == "centre" else f"at the {row} {col}"


def plural(noun: str) -> str:
    """English plural of a category name ('box' -> 'boxes', 'traffic light' -> 'traffic lights')."""
    head, _, last = noun.rpartition(" ")
    if last in _ALREADY_PLURAL:
        out = last
    elif last in _IRREGULAR:
        out = _IRREGULAR[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _rng(seed: int, image_id: Any) -> np.random.Generator:
    key = image_id if isinstance(image_id, int) else zlib.crc32(str(image_id).encode())
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0C0, int(key)]))


def _pick(rng: np.random.Generator, seq: list) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _objects(anns: list[dict], names: dict[int, str], min_area: float) -> list[dict[str, Any]]:
    objs = []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if ann.get("iscrowd") or w <= 0 or h <= 0 or float(ann.get("area", w * h)) < min_area:
            continue
        color = (ann.get("attributes") or {}).get("color")
        name = names[ann["category_id"]]
        objs.append(
            {
                "name": name,
                "color": color,
                "desc": f"{color} {name}" if color else name,
                "bbox": [x, y, w, h],
                "cx": x + w / 2,
                "cy": y + h / 2,
                "area": w * h,
            }
        )
    return objs


def image_questions(
    image: dict[str, Any],
    anns: list[dict[str, Any]],
    names: dict[int, str],
    rng: np.random.Generator,
    tasks: tuple[str, ...] = TASKS,
    max_caption_objects: int = 10,
    min_area: float = 0.0,
    box_format: str = "pixels",
) -> list[dict[str, Any]]:
    """The questions about one image: dicts with q, a, task (and metric where not default; a
    norm1000 grounding question also has box_format)."""
    W, H = float(image["width"]), float(image["height"])
    objs = _objects(anns, names, min_area)
    counts: dict[str, int] = {}
    for o in objs:
        counts[o["desc"]] = counts.get(o["desc"], 0) + 1
    unique = [o for o in objs if counts[o["desc"]] == 1]
    out: list[dict[str, Any]] = []
    if "caption" in tasks and objs:
        shown = sorted(objs, key=lambda o: -o["area"])[:max_caption_objects]
        shown.sort(key=lambda o: (min(2, int(3 * o["cy"] / H)), o["cx"], o["cy"]))
        text = ", ".join(
            f"{article(o['desc'])} {position_phrase(o['cx'], o['cy'], W, H)}" for o in shown
        )
        out.append({"q": CAPTION_PROMPT, "a": text, "task": "caption", "metric": "cider"})
    if "relation" in tasks:
        pairs = [
            (a, b, axis)
            for a in unique
            for b in unique
            if a is not b
            for axis in ("x", "y")
            if abs(a["c" + axis] - b["c" + axis]) >= 0.1 * (W if axis == "x" else H)
        ]
        if pairs:
            a, b, axis = _pick(rng, pairs)
            words = ("left of", "right of") if axis == "x" else ("above", "below")
            rel = _pick(rng, list(words))
            before = a["c" + axis] < b["c" + axis]  # a is left of / above b
            truth = before if rel in ("left of", "above") else not before
            q = f"Is the {a['desc']} {rel} the {b['desc']}?"
            out.append({"q": q, "a": "yes" if truth else "no", "task": "relation"})
    if "grounding" in tasks and unique:
        o = _pick(rng, unique)
        q = f"Where is the {o['desc']}? {box_prompt(box_format)}"
        a = box_text(o["bbox"], box_format, (W, H))
        entry = {"q": q, "a": a, "task": "grounding", "metric": "box_accuracy"}
        if box_format != "pixels":  # absent means pixels, so pixel records stay as they were
            entry["box_format"] = box_format
        out.append(entry)
    if "count" in tasks and names:
        present = sorted({o["name"] for o in objs})
        absent = sorted(set(names.values()) - set(present))
        pool = present if present and (not absent or rng.random() < 0.75) else absent
        name = _pick(rng, pool)
        n = sum(o["name"] == name for o in objs)
        out.append({"q": f"How many {plural(name)}?", "a": str(n), "task": "count"})
    if "attribute" in tasks:
        per_name: dict[str, list[dict]] = {}
        for o in objs:
            per_name.setdefault(o["name"], []).append(o)
        single = [v[0] for _, v in sorted(per_name.items()) if len(v) == 1 and v[0]["color"]]
        if single:
            o = _pick(rng, single)
            out.append(
                {"q": f"What colour is the {o['name']}?", "a": o["color"], "task": "attribute"}
            )
    return out


def coco_to_records(
    coco: dict[str, Any],
    image_dir: str,
    id_prefix: str,
    family: str = "scene",
    seed: int = 0,
    tasks: tuple[str, ...] = TASKS,
    max_caption_objects: int = 10,
    min_area: float = 0.0,
    box_format: str = "pixels",
) -> list[dict[str, Any]]:
    """Records for every image of a COCO instances dict; image paths are image_dir/file_name.
    Every image needs a width and height (`image_size` finds missing ones)."""
    names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    by_image: dict[Any, list[dict]] = {}
    for ann in sorted(coco["annotations"], key=lambda a: a.get("id", 0)):
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = []
    for image in coco["images"]:
        iid = image["id"]
        rng = _rng(seed, iid)
        path = (
            posixpath.join(image_dir, image["file_name"])
            if image_dir not in ("", ".")
            else image["file_name"]
        )
        key = f"{iid:06d}" if isinstance(iid, int) else str(iid)
        entries = image_questions(
            image,
            by_image.get(iid, []),
            names,
            rng,
            tasks,
            max_caption_objects,
            min_area,
            box_format,
        )
        for e in entries:
            extra = {k: v for k, v in e.items() if k not in ("q", "a")}
            records.append(
                make_record(
                    f"{id_prefix}-{key}-{e['task']}", path, [(e["q"], e["a"])], family, **extra
                )
            )
    return records


def load_coco(path: str | Path, need_size: bool = True) -> dict[str, Any]:
    """Read and check a COCO instances JSON; errors name the file and the offending entry.
    need_size=False: images entries may lack width and height (the caller finds them)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: COCO annotations file not found")
    text = utf8_text(path.read_bytes(), path)
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected an object with images, annotations, categories")
    required = {
        "images": ("id", "file_name", "width", "height")[: 4 if need_size else 2],
        "annotations": ("image_id", "category_id", "bbox"),
        "categories": ("id", "name"),
    }
    for key, fields in required.items():
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: missing list '{key}'")
        for i, entry in enumerate(coco[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DataError(f"{path}: {key}[{i}] has no '{missing[0]}'")
    cats = {c["id"] for c in coco["categories"]}
    for i, ann in enumerate(coco["annotations"]):
        if ann["category_id"] not in cats:
            raise DataError(
                f"{path}: annotations[{i}] has unknown category_id {ann['category_id']}"
            )
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise DataError(f"{path}: annotations[{i}].bbox must be [x, y, w, h]")
    return coco


class COCOParams(ConverterParams):
    annotations: Path = Field(description="COCO instances JSON")
    images: Path = Field(description="folder holding the images")
    family: str = Field("scene", description="family field of the records")
    prefix: str = Field("coco", description="record id prefix")
    seed: int = Field(0, description="seed for which questions are asked")
    tasks: tuple[str, ...] = Field(
        TASKS, description=f"comma-separated subset of {','.join(TASKS)}"
    )
    max_caption_objects: int = Field(10, description="most objects a caption names")
    min_area: float = Field(0.0, description="skip smaller objects (px^2)")
    allow_missing: bool = Field(False, description="drop images whose file is missing")
    limit: NonNegativeInt | None = Field(None, description="keep at most N records")
    # norm1000 by default: real images come in mixed sizes the model never sees (it sees them
    # resized), so only coordinates relative to the image can be learnt consistently
    box_format: BoxFormat = Field(
        "norm1000", description="grounding boxes in image pixels or 0-1000 of width/height"
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _known_tasks(cls, value: Any) -> Any:
        return comma_choices(value, TASKS, "task", allow_empty=True)


@register_converter("coco", family="scene", params=COCOParams)
def convert(params: COCOParams, out_dir: Path) -> list[dict[str, Any]]:
    """COCO instances JSON -> spatial captions, relations, grounding, counting"""
    coco = load_coco(params.annotations, need_size=False)
    images_dir = params.images
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    missing = [
        im["file_name"] for im in coco["images"] if not (images_dir / im["file_name"]).is_file()
    ]
    if missing and not params.allow_missing:
        raise DataError(
            f"{images_dir / missing[0]}: image file not found ({len(missing)} missing; "
            "--allow-missing drops them)"
        )
    if missing:
        gone = set(missing)
        coco = {**coco, "images": [im for im in coco["images"] if im["file_name"] not in gone]}
    coco = _with_sizes(coco, images_dir, params.annotations)
    return coco_to_records(
        coco,
        image_dir=relative_image_path(images_dir, out_dir),
        id_prefix=f"{params.prefix}-{params.split}",
        family=params.family,
        seed=params.seed,
        tasks=params.tasks,
        max_caption_objects=params.max_caption_objects,
        min_area=params.min_area,
        box_format=params.box_format,
    )[: params.limit]


def _with_sizes(coco: dict[str, Any], images_dir: Path, source: Path) -> dict[str, Any]:
    """`coco` with every image's width and height (from the file where the entry lacks them);
    images with neither are dropped, counted in a note on stderr, as no box can be placed."""
    kept, skipped = [], []
    for im in coco["images"]:
        size = image_size(im, images_dir / im["file_name"])
        if size is None:
            skipped.append(im["file_name"])
        else:
            kept.append({**im, "width": size[0], "height": size[1]})
    if skipped and not kept:
        raise DataError(f"{source}: no records ({len(skipped)} image(s) without a size)")
    if skipped:
        print(
            f"{source}: skipped {len(skipped)} image(s) with no width/height and an unreadable "
            f"file (first: {images_dir / skipped[0]})",
            file=sys.stderr,
        )
    return {**coco, "images": kept}
