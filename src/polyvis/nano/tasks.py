"""Which synthetic questions the nano world's models train and are scored on, and in what mix.

A family's score is its own metric over its short-answer questions (scene: relation, count,
attribute; chart: lookup, extreme, compare; ...). The long transcriptions (captions, boxes,
markdown tables, chart data) are scored with other metrics and cost most of a small budget's
answer tokens, so the nano world leaves them out of the models' training and test sets; vary-nano
still pretrains on the transcriptions (that is the Vary recipe). Every family then gets the same
number of training records (cycled when a family has fewer), so a family with several questions
per image does not crowd out the others; the families that draw one question type per image
(`BALANCED`) also give each type an equal share.
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
    "mixed": ("read", "colour", "describe"),
    "binding": ("position_colour", "colour_text", "position_text"),
    "chartbind": ("colour_value",),
    "detail": ("pattern", "orientation"),
}
# Families that ask one question per image, its type drawn at random: a selection gives each
# type an equal share, so no type weighs more in the family's mean by the luck of the draw.
BALANCED: frozenset[str] = frozenset({"binding", "chartbind"})


def select_split(
    data_dir: Path,
    families: list[str],
    split: str,
    per_family: int | None = None,
    seed: int = 0,
    suffix: str = "nano",
    per_image: bool = False,
) -> list[Path]:
    """Write `FAMILY/{split}.{suffix}.jsonl` with the family's scored questions; returns the paths.

    per_family: exactly this many records per family (shuffled, cycled when there are fewer);
    None keeps every scored record in file order.
    per_image: one multi-turn record per image holding all of its scored questions (in a
    shuffled order), as LLaVA's instruction data does: the image's tokens are paid for once and
    every answer is trained on.
    """
    paths = []
    for fam in families:
        src = data_dir / fam / f"{split}.jsonl"
        keep = SCORED_TASKS.get(fam)
        records = [
            r for r in read_records(src, validate=False) if keep is None or r.get("task") in keep
        ]
        if per_image:
            records = group_by_image(records, random.Random(f"{seed}-{fam}-{split}-turns"))
        rng = random.Random(f"{seed}-{fam}-{split}")
        if fam in BALANCED and records:
            records = balance_tasks(records, per_family, rng)
        elif per_family is not None and records:
            records = cycled(records, per_family, rng)
        paths.append(write_records(data_dir / fam / f"{split}.{suffix}.jsonl", records))
    return paths


def cycled(records: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n records: the list shuffled, again and again, until n are drawn."""
    pool: list[dict] = []
    for rep in range(-(-n // len(records))):
        # A repeated record keeps its image and question under a new id (ids are unique).
        chunk = [r if rep == 0 else {**r, "id": f"{r['id']}~{rep}"} for r in records]
        rng.shuffle(chunk)
        pool += chunk
    return pool[:n]


def balance_tasks(records: list[dict], n: int | None, rng: random.Random) -> list[dict]:
    """Equal shares of each question type (`task`).

    n: that many records, each type's share (n // types, the first n % types types one more)
    cycled from its own records, then all shuffled. None: the first m records of each type in
    file order, m the count of the rarest type.
    """
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(str(r.get("task")), []).append(r)
    tasks = sorted(by_task)
    if n is None:
        m = min(len(v) for v in by_task.values())
        keep = {id(r) for t in tasks for r in by_task[t][:m]}
        return [r for r in records if id(r) in keep]
    pool = []
    for i, task in enumerate(tasks):
        pool += cycled(by_task[task], n // len(tasks) + (i < n % len(tasks)), rng)
    rng.shuffle(pool)
    return pool


def group_by_image(records: list[dict], rng: random.Random) -> list[dict]:
    """One record per image: its questions as turns of one conversation, the image marker in
    the first; the id is the first question's id plus `+N` for N more turns."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get("image")), []).append(r)
    out = []
    for group in groups.values():
        rng.shuffle(group)
        turns = []
        for i, r in enumerate(group):
            question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
            question = question.replace("<image>\n", "").replace("<image>", "")
            turns += [
                {"from": "human", "value": ("<image>\n" if i == 0 else "") + question},
                {"from": "gpt", "value": answer},
            ]
        first = group[0]
        rid = first["id"] if len(group) == 1 else f"{first['id']}+{len(group) - 1}"
        extra = {k: v for k, v in first.items() if k not in ("id", "conversations", "task")}
        out.append(
            {"id": rid, **extra, "conversations": turns, "task": "+".join(r["task"] for r in group)}
        )
    return out
