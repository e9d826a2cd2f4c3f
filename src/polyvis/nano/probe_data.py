"""What the probes ask, read from the synthetic families' own records.

scene (its COCO annotations, `scene/annotations/{split}.json`): the colour, shape and size of
the largest shape, the number of shapes, the colour of the leftmost shape (two or more
shapes), and, per colour, the cell (3 x 3) of the one shape of that colour ("the cell of the
red object"; images with exactly one shape of it). Every other attribute the generator writes
on its shapes (`attributes`, besides the colour) becomes a probe of the largest shape too, and
of the one shape of each colour ("the pattern of the red object").
detail (the same annotations, in `detail/`): those probes, with pattern and orientation, each
named with " (detail)" (`pattern (detail)`), apart from the scene's.
mixed (`mixed/{split}.jsonl`): the word on the first sign in reading order, and its first letter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.nano.probe_fit import Task

SPLITS = ("train", "val")
# The order of the table's columns; probes found in the data but not named here come last.
ORDER = ("colour", "shape", "count", "size", "leftmost colour", "cell of the X object",
         "pattern (detail)", "orientation (detail)", "pattern of the X object (detail)",
         "orientation of the X object (detail)",
         "sign word", "sign letter")  # fmt: skip


@dataclass
class ProbeSet:
    """One family's images (train first, then val) and the probe tasks on them."""

    family: str
    images: list[Path]
    n_train: int
    tasks: list[Task] = field(default_factory=list)


def _cell(bbox: list[float], width: int, height: int) -> str:
    cx, cy = bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
    return f"r{min(2, int(3 * cy / height))}c{min(2, int(3 * cx / width))}"


def _scene_split(folder: Path, split: str) -> list[tuple[Path, list[dict[str, Any]], dict]]:
    coco = json.loads((folder / "annotations" / f"{split}.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        attrs = dict(ann.get("attributes") or {})
        objects[ann["image_id"]].append(
            {"shape": names[ann["category_id"]], "bbox": ann["bbox"], **attrs}
        )
    return [
        (folder / "images" / split / im["file_name"], objects[im["id"]], im)
        for im in sorted(coco["images"], key=lambda im: im["id"])
    ]


def scene_probes(folder: Path, max_train: int | None = None, family: str = "scene") -> ProbeSet:
    """The shape probes of a `scene` (or `detail`) family folder (the generator's annotations)."""
    rows = {s: _scene_split(folder, s) for s in SPLITS}
    rows["train"] = rows["train"][:max_train]
    images = [path for s in SPLITS for path, _, _ in rows[s]]
    out = ProbeSet(family, images, len(rows["train"]))
    labels: dict[str, dict[str, list[tuple[int, str]]]] = {}

    def add(name: str, split: str, row: int, label: str) -> None:
        if family != "scene":  # "pattern of the X object:red" -> "... (detail):red"
            base, colon, colour = name.partition(":")
            name = f"{base} ({family}){colon}{colour}"
        labels.setdefault(name, {s: [] for s in SPLITS})[split].append((row, label))

    thirds = _thirds(rows["train"])
    row = 0
    for split in SPLITS:
        for _, objs, im in rows[split]:
            if objs:
                for name, label in _shape_probes(objs, im, thirds):
                    add(name, split, row, label)
            row += 1
    out.tasks = _tasks(labels)
    return out


def _largest_side(objs: list[dict[str, Any]]) -> float:
    return max(max(o["bbox"][2], o["bbox"][3]) for o in objs)


def _thirds(train_rows: list) -> tuple[float, float]:
    """The training split's thirds of the largest shape's side (small / medium / large)."""
    sides = sorted(_largest_side(objs) for _, objs, _ in train_rows if objs)
    return sides[len(sides) // 3], sides[2 * len(sides) // 3]


def _shape_probes(
    objs: list[dict[str, Any]], im: dict, thirds: tuple[float, float]
) -> list[tuple[str, str]]:
    """One image's scene labels: (probe name, label) pairs."""
    big = max(objs, key=lambda o: o["bbox"][2] * o["bbox"][3])  # the first of equals
    out = [("count", str(len(objs)))]
    out += [("colour" if k == "color" else k, str(v)) for k, v in big.items() if k != "bbox"]
    if "size" not in big:
        side = _largest_side(objs)
        out.append(
            ("size", "small" if side < thirds[0] else "medium" if side < thirds[1] else "large")
        )
    if len(objs) >= 2 and "color" in objs[0]:
        centre = [(o["bbox"][0] + o["bbox"][2] / 2, o["bbox"][1] + o["bbox"][3] / 2) for o in objs]
        out.append(("leftmost colour", objs[centre.index(min(centre))]["color"]))
    colours = [o.get("color") for o in objs]
    for o in objs:
        if o.get("color") is not None and colours.count(o["color"]) == 1:
            cell = _cell(o["bbox"], im["width"], im["height"])
            out.append((f"cell of the X object:{o['color']}", cell))
            for key in ("pattern", "orientation"):
                if key in o:
                    out.append((f"{key} of the X object:{o['color']}", str(o[key])))
    return out


def mixed_probes(folder: Path, max_train: int | None = None) -> ProbeSet:
    """The sign probes of a `mixed` family folder: the first sign's word and its first letter."""
    from polyvis.data.records import read_records, record_image_paths
    from polyvis.data.synthetic.mixed import TRANSCRIBE
    from polyvis.nano._common import answer_of, question_of

    images: list[Path] = []
    labels: dict[str, dict[str, list[tuple[int, str]]]] = {}
    n_train = 0
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        count = 0
        for rec in read_records(path):
            if question_of(rec) != TRANSCRIBE or (split == "train" and count == max_train):
                continue
            word = answer_of(rec).split()[0]
            row = len(images)
            images.append(record_image_paths(rec, path.parent)[0])
            for name, label in (("sign word", word), ("sign letter", word[0])):
                labels.setdefault(name, {s: [] for s in SPLITS})[split].append((row, label))
            count += 1
        if split == "train":
            n_train = count
    out = ProbeSet("mixed", images, n_train)
    out.tasks = _tasks(labels)
    return out


def _tasks(labels: dict[str, dict[str, list[tuple[int, str]]]]) -> list[Task]:
    tasks = []
    for name, by_split in labels.items():
        tr, va = by_split["train"], by_split["val"]
        if tr and va:
            tasks.append(Task(name, [r for r, _ in tr], [lab for _, lab in tr],
                              [r for r, _ in va], [lab for _, lab in va]))  # fmt: skip
    return tasks


def find_probe_sets(data_dirs: list[Path], max_train: int | None = None) -> list[ProbeSet]:
    """The scene, detail and mixed probe sets of the first folders that hold each family."""
    sets = []
    for family in ("scene", "detail"):
        found = (d / family for d in data_dirs if (d / family / "annotations/val.json").is_file())
        folder = next(found, None)
        if folder is not None:
            sets.append(scene_probes(folder, max_train, family))
    mixed = next((d / "mixed" for d in data_dirs if (d / "mixed/val.jsonl").is_file()), None)
    if mixed is not None:
        sets.append(mixed_probes(mixed, max_train))
    return sets
