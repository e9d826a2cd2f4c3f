"""The interface of a synthetic task family and the registry that holds them.

A family is registered in `FAMILIES` under its name and does two things:

- `render(rng, size, difficulty) -> Item`: draw one image from the numpy Generator it is handed
  (the only source of randomness, so the same seed gives the same bytes) and return it with its
  ground truth as JSON-able `meta`. This runs in worker processes, one call per image.
- `to_records(split, metas, folder, seed) -> records`: turn the ground truth of all images of a
  split into conversation records (run once per split in the main process). The default makes
  one record per entry of `meta["qa"]`; the scene family overrides it to go through COCO.

Image i of a split lives at `images/{split}/{i:06d}.png` relative to the family folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from polyvis.data.records import make_record
from polyvis.registry import registry

FAMILIES = registry("family")


def two_expert_groups() -> list[str]:
    """ "family/task" of every question type that needs two experts, e.g. "mixed/describe"."""
    FAMILIES.discover()
    return [f"{n}/{t}" for n in FAMILIES for t in FAMILIES.get(n).two_expert_tasks]


def image_name(index: int) -> str:
    """The file name of image `index` of a split."""
    return f"{index:06d}.png"


def image_rel_path(split: str, index: int) -> str:
    """Image path relative to the family folder (where the split's JSONL lives)."""
    return f"images/{split}/{image_name(index)}"


def qa(question: str, answer: str, task: str, **extra: Any) -> dict[str, Any]:
    """One question/answer entry of an item's meta; `task` names the question type."""
    return {"q": question, "a": answer, "task": task, **extra}


@dataclass
class Item:
    """One rendered image and its ground truth (JSON-able, crosses process boundaries)."""

    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)


class Family:
    """Base class of a synthetic family; subclasses set `name`, `metric` and `render`."""

    name: ClassVar[str] = ""
    # The family's default metric (records may override it with their own "metric" field).
    metric: ClassVar[str] = "exact_match"
    # The question types (tasks) that no single expert answers: they need two at once.
    two_expert_tasks: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def page_size(cls, size: int) -> tuple[int, int]:
        """The (width, height) of the images drawn at generator size `size`: a size x size
        square, except for page families, whose larger page holds text small at `size`."""
        return size, size

    def render(self, rng: np.random.Generator, size: int, difficulty: str) -> Item:
        raise NotImplementedError

    def to_records(
        self, split: str, metas: list[dict[str, Any]], folder: Path, seed: int
    ) -> list[dict[str, Any]]:
        """One single-turn record per question of every image, ids `{family}-{split}-{i}-{task}`."""
        records = []
        for index, meta in enumerate(metas):
            for entry in meta["qa"]:
                extra = {k: v for k, v in entry.items() if k not in ("q", "a")}
                records.append(
                    make_record(
                        f"{self.name}-{split}-{index:06d}-{entry['task']}",
                        image_rel_path(split, index),
                        [(entry["q"], entry["a"])],
                        family=self.name,
                        **extra,
                    )
                )
        return records
