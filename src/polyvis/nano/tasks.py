"""Which synthetic questions the nano world's models train and are scored on, and in what mix.

A family's score is its own metric over its short-answer questions (scene: relation, count,
attribute; chart: lookup, extreme, compare; ...). The long transcriptions (captions, boxes,
markdown tables, chart data) are scored with other metrics and cost most of a small budget's
answer tokens, so the nano world leaves them out of the models' training and test sets; vary-nano
still pretrains on the transcriptions (that is the Vary recipe). Every family then gets the same
number of training records (cycled when a family has fewer), so a family with several questions
per image does not crowd out the others.
"""

from __future__ import annotations

import random
from pathlib import Path

from polyvis.data.records import read_records, write_records

SCORED_TASKS: dict[str, tuple[str, ...]] = {
    "scene": ("relation", "count", "attribute"),
    "ocr": ("read",),
    "latex": ("transcribe",),
    "chart": ("lookup", "extreme", "compare"),
    "table": ("lookup",),
    "mixed": ("read", "colour"),
}


def select_split(
    data_dir: Path,
    families: list[str],
    split: str,
    per_family: int | None = None,
    seed: int = 0,
    suffix: str = "nano",
) -> list[Path]:
    """Write `FAMILY/{split}.{suffix}.jsonl` with the family's scored questions; returns the paths.

    per_family: exactly this many records per family (shuffled, cycled when there are fewer);
    None keeps every scored record in file order.
    """
    paths = []
    for fam in families:
        src = data_dir / fam / f"{split}.jsonl"
        keep = SCORED_TASKS.get(fam)
        records = [
            r for r in read_records(src, validate=False) if keep is None or r.get("task") in keep
        ]
        if per_family is not None and records:
            rng = random.Random(f"{seed}-{fam}-{split}")
            pool: list[dict] = []
            for rep in range(-(-per_family // len(records))):
                # A repeated record keeps its image and question under a new id (ids are unique).
                chunk = [r if rep == 0 else {**r, "id": f"{r['id']}~{rep}"} for r in records]
                rng.shuffle(chunk)
                pool += chunk
            records = pool[:per_family]
        paths.append(write_records(data_dir / fam / f"{split}.{suffix}.jsonl", records))
    return paths
