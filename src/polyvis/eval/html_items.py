"""The items of an HTML report: each run's answers (answers.jsonl) joined per question, sampled
per family, with a thumbnail of the question's image.

An answers.jsonl row (what `polyvis eval` writes) has id, family, metric, question, reference,
prediction and score; it names no image, so thumbnails come from the records files that were
evaluated (the run's results.json lists them under settings.data), matched on family and id.
An answer that holds boxes `[x1, y1, x2, y2]` also gets the image with its boxes drawn (magenta)
beside the reference's (green), placed as the record's `box_format` says (pixels, or norm1000 of
the image's size).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError, DataError
from polyvis.eval.metrics import FAMILY_METRICS

RIGHT = (
    0.5  # an answer counts as right from this score on (exact match is 0 or 1; ANLS cuts at 0.5)
)
THUMB_PX = 96


@dataclass
class Answer:
    prediction: str
    score: float
    boxes: str | None = None  # a data: URI of the image with the prediction's boxes drawn

    @property
    def right(self) -> bool:
        return self.score >= RIGHT


@dataclass
class Item:
    """One question and every run's answer to it (runs that lack it are absent)."""

    group: str  # the score group: the family, or "family/metric" as in results.json
    family: str
    id: str
    question: str
    reference: str
    answers: dict[str, Answer] = field(default_factory=dict)
    thumbnail: str | None = None  # a data: URI

    @property
    def disagree(self) -> bool:
        """Some runs answer it right and others wrong."""
        return len({a.right for a in self.answers.values()}) > 1


def group_of(family: str, metric: Any) -> str:
    """The runner's score group: the family, or "family/metric" for another metric."""
    if metric is None or metric == FAMILY_METRICS.get(family, "exact_match"):
        return family
    return f"{family}/{metric}"


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an answers.jsonl; a missing or malformed file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: answers file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["id"], row["family"], row["score"] = (
                str(row["id"]),
                str(row["family"]),
                float(row["score"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}:{n}: not an answers row ({err!r})") from None
        rows.append(row)
    return rows


def join_answers(answers: Mapping[str, str | Path]) -> list[Item]:
    """Every run's answers (run name -> answers.jsonl) joined on family, id and occurrence, in
    the order the runs first list them."""
    items: dict[tuple[str, str, int], Item] = {}
    for run, path in answers.items():
        seen: dict[tuple[str, str], int] = {}
        for row in read_answers(path):
            fam_id = (row["family"], row["id"])
            seen[fam_id] = seen.get(fam_id, 0) + 1
            key = (*fam_id, seen[fam_id])
            if key not in items:
                items[key] = Item(
                    group=group_of(row["family"], row.get("metric")),
                    family=row["family"],
                    id=row["id"],
                    question=str(row.get("question", "")),
                    reference=str(row.get("reference", "")),
                )
            items[key].answers[run] = Answer(str(row.get("prediction", "")), row["score"])
    return list(items.values())


def sample_items(items: list[Item], per_family: int) -> list[Item]:
    """Up to `per_family` items of each group: those the runs disagree on first (they show what
    tells the runs apart), then the others, each in their first order."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.group, []).append(it)
    out = []
    for group in groups.values():
        ranked = [it for it in group if it.disagree] + [it for it in group if not it.disagree]
        out += ranked[:per_family]
    return out


def record_index(
    records_files: Iterable[str | Path],
) -> dict[tuple[str, str], tuple[Path, str | None]]:
    """(family, id) -> the record's first image and its box format (None when the record's
    `box_format` is unknown: its boxes cannot be placed), from records files; unreadable files
    are left out (thumbnails are a convenience: a report without them is still a report)."""
    from polyvis.data.boxes import record_box_format
    from polyvis.data.records import read_records, record_image_paths

    index: dict[tuple[str, str], tuple[Path, str | None]] = {}
    for f in records_files:
        f = Path(f)
        try:
            records = read_records(f, validate=False)
        except (DataError, OSError):
            continue
        for rec in records:
            paths = record_image_paths(rec, f.parent) if isinstance(rec, dict) else []
            if paths:
                family = str(rec.get("family") or f.stem)
                try:
                    fmt: str | None = record_box_format(rec)
                except ConfigError:
                    fmt = None
                index.setdefault((family, str(rec.get("id"))), (paths[0], fmt))
    return index


def records_of(results_json: str | Path) -> list[Path]:
    """The records files a run evaluated (its results.json's settings.data), or none."""
    path = Path(results_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Path(f) for f in data["settings"]["data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def thumbnail(path: str | Path, size: int = THUMB_PX) -> str | None:
    """A small data: URI of the image (PNG when tiny, else JPEG), or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((size, size))
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    small = max(im.size) <= 64  # the nano world's images: PNG keeps their pixels exact
    return data_uri(im, "png" if small else "jpeg")


def data_uri(im: Any, kind: str = "png") -> str:
    buf = io.BytesIO()
    im.save(buf, kind.upper(), quality=85)
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode()


def box_thumbnail(
    path: str | Path,
    prediction: str,
    reference: str,
    size: int = THUMB_PX,
    box_format: str = "pixels",
) -> str | None:
    """The image at `size` px with the reference's boxes (green) and the prediction's (magenta)
    drawn, as a PNG data: URI; None when the prediction holds no box or the image is unreadable.
    box_format: how both are written (the record's; norm1000 boxes are placed by image size)."""
    from PIL import Image

    from polyvis.data.boxes import (
        ANSWER_COLOUR,
        REFERENCE_COLOUR,
        boxes_to_pixels,
        draw_boxes,
        fit,
        parse_boxes,
    )

    boxes = parse_boxes(prediction)
    if not boxes:
        return None
    try:
        with Image.open(path) as im:
            original = im.size
            shown, scale = fit(im, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    refs = boxes_to_pixels(parse_boxes(reference), box_format, original)
    shown = draw_boxes(shown, refs, REFERENCE_COLOUR, width=1, scale=scale)
    boxes = boxes_to_pixels(boxes, box_format, original)
    return data_uri(draw_boxes(shown, boxes, ANSWER_COLOUR, width=2, scale=scale))


def report_items(
    answers: Mapping[str, str | Path],
    records: Iterable[str | Path] = (),
    per_family: int = 8,
) -> list[Item]:
    """The sampled, joined items of some runs, with thumbnails where the records have images.

    records: records files to find images in; each run's own results.json (beside its
    answers.jsonl) adds the files it evaluated.
    """
    files = [Path(f) for f in records]
    for path in answers.values():
        files += [f for f in records_of(Path(path).parent / "results.json") if f not in files]
    items = sample_items(join_answers(answers), per_family)
    index = record_index(files) if items else {}
    for it in items:
        if (it.family, it.id) not in index:
            continue
        image, box_format = index[(it.family, it.id)]
        it.thumbnail = thumbnail(image)
        if box_format is None:  # a record the checker rejects: drawn nowhere rather than wrong
            continue
        for ans in it.answers.values():
            ans.boxes = box_thumbnail(image, ans.prediction, it.reference, box_format=box_format)
    return items
