"""The task runner: answer every record of some records files, score the answers, write a report.

    from polyvis.eval.runner import evaluate
    results = evaluate(model, processor, ["data/nano/scene/val.jsonl"], out_dir="runs/eval")

Each record is one question: its last assistant turn, asked after the earlier turns (whose answers
are the record's own, i.e. teacher-forced), so a multi-turn record scores its final answer. The
prompt is the conversation up to that answer through the tokenizer's chat template, tokenised as
training tokenises it (`polyvis.data.template.prompt_ids`). References are the record's
"references" list when it has one (TextCaps: every caption), else the last answer.

Scores are grouped by a key: the record's family when it is scored with the family's default
metric (or with `metric=`, which overrides every record's), else "family/metric" (a scene record
scored by CIDEr goes to "scene/cider"), so no group mixes metrics. A group's score is the mean of
its item scores; the items of a CIDEr group are scored together (CIDEr's IDF comes from the set).
"overall" is the unweighted mean over the groups, as in `polyvis.eval.report`.

Records whose images are missing, corrupt or too large are skipped and counted by reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyvis.data.images import ImageError, load_image_and_hash
from polyvis.data.records import IMAGE_TOKEN, read_records, record_image_paths
from polyvis.data.template import ROLE_MAP, for_images, prompt_ids
from polyvis.errors import ConfigError, DataError
from polyvis.eval.boxes import parse_box
from polyvis.eval.generation import generate_batch
from polyvis.eval.metrics import FAMILY_METRICS, METRICS, item_scores, metric_for
from polyvis.eval.report import order_families, write_report
from polyvis.progress import progress_bar

__all__ = ["ANSWERS_FILE", "EvalItem", "evaluate", "load_items", "model_config_summary"]

ANSWERS_FILE = "answers.jsonl"


@dataclass
class EvalItem:
    """One question to answer: the record's last answer, after its earlier turns."""

    id: str
    family: str
    metric: str
    key: str  # the scores group (see the module doc)
    question: str
    references: list[str]
    messages: list[dict[str, str]]  # chat messages up to (not including) the answer
    image_paths: list[Path]


def _references(rec: dict[str, Any]) -> list[str]:
    refs = rec.get("references")
    if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
        return list(refs)
    return [rec["conversations"][-1]["value"]]


def _item(
    rec: dict[str, Any], root: Path, default_family: str, metric: str | None, f: Path
) -> EvalItem:
    family = str(rec.get("family") or default_family)
    if metric is None and not isinstance(rec.get("metric"), str | None):  # a list: unhashable
        raise DataError(f"{f}: record {rec['id']}: 'metric' must be a metric name (a string)")
    name = metric or metric_for(rec)
    own = metric is not None or name == FAMILY_METRICS.get(family, "exact_match")
    turns = rec["conversations"]
    messages = [{"role": ROLE_MAP[t["from"]], "content": t["value"]} for t in turns[:-1]]
    return EvalItem(
        id=str(rec["id"]),
        family=family,
        metric=name,
        key=family if own else f"{family}/{name}",
        question=turns[-2]["value"].replace(IMAGE_TOKEN, "").strip(),
        references=_references(rec),
        messages=messages,
        image_paths=record_image_paths(rec, root),
    )


def load_items(
    records_files: str | Path | Iterable[str | Path],
    metric: str | None = None,
    limit: int | None = None,
    allow_empty: bool = True,
) -> list[EvalItem]:
    """The questions of some records files: at most `limit` records from each file.

    A record without a "family" takes its file's name (`textvqa_val.jsonl` -> "textvqa_val").
    metric: score every record with this metric instead of its own.
    allow_empty=False: a file without records is an error naming it (files a user named).
    Refused here, before any model runs: a file given twice, an id two records share (compared as
    text), an empty reference, a box_accuracy reference without a box (`_check_references`).
    """
    files = [records_files] if isinstance(records_files, str | Path) else list(records_files)
    if not files:
        raise ConfigError("data", "no records files given")
    if metric is not None and metric not in METRICS:
        raise ConfigError(
            "metric", f"unknown metric {metric!r}; valid: {', '.join(METRICS.names())}"
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    paths = [Path(f) for f in files]
    given: dict[Path, Path] = {}
    for f in paths:  # the same file twice would score its records twice
        first = given.setdefault(f.resolve(), f)
        if first is not f:
            same = "" if str(first) == str(f) else f" (as {first})"
            raise ConfigError("data", f"{f} is given twice{same}")
    items: list[EvalItem] = []
    first_seen: dict[str, Path] = {}
    for f in paths:
        records = read_records(f, allow_empty=allow_empty)
        for r in records:  # answers and reports are keyed by id (as a string), as training's are
            rid = str(r["id"])
            if rid in first_seen:
                if first_seen[rid] == f:  # 1 and "1": read_records told them apart
                    where = "this file (ids are compared as text)"
                else:
                    where = str(first_seen[rid])
                raise DataError(f"{f}: record id {r['id']!r} is also in {where}")
            first_seen[rid] = f
        for r in records[:limit]:
            item = _item(r, f.parent, f.stem, metric, f)
            _check_references(item, f)
            items.append(item)
    return items


def _check_references(item: EvalItem, f: Path) -> None:
    """Refuse, before the model runs, references that would score wrongly or fail after it."""
    if any(not ref.strip() for ref in item.references):
        # An empty reference makes an empty answer (a model that says nothing) score as right.
        raise DataError(f"{f}: record {item.id}: empty reference answer")
    if item.metric == "box_accuracy":
        for ref in item.references:
            box = parse_box(ref)
            if box is None:
                raise DataError(
                    f"{f}: record {item.id}: box_accuracy reference {ref!r} has fewer than 4 "
                    "numbers (x1, y1, x2, y2)"
                )
            if box[2] <= box[0] or box[3] <= box[1]:  # no area: no answer could ever match it
                raise DataError(
                    f"{f}: record {item.id}: box_accuracy reference {ref!r} has no area "
                    "(needs x2 > x1 and y2 > y1)"
                )


def model_config_summary(model: Any, model_dir: str | Path | None = None) -> dict[str, Any]:
    """The model's polyvis config: MODEL/polyvis.yaml when the directory has one, else the
    encoder names, fusion and adapter from its config.json."""
    if model_dir is not None and (Path(model_dir) / "polyvis.yaml").is_file():
        import yaml

        data = yaml.safe_load((Path(model_dir) / "polyvis.yaml").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    cfg = model.config
    return {
        "encoders": [e["name"] for e in getattr(cfg, "encoders", [])],
        "fusion": dict(getattr(cfg, "fusion", {}) or {}),
        "adapter": dict(getattr(cfg, "adapter", {}) or {}),
    }


def _predict(
    model: Any,
    processor: Any,
    items: Sequence[EvalItem],
    images: list[list[tuple[Any, str]]],
    gen: dict,
    cache: Any | None = None,
) -> list[str]:
    """The model's answers to a batch of items (their images already loaded, with their files'
    hashes); with `cache` (a FeatureCache), the encoders' outputs come from it."""
    pictures = [[im for im, _ in ims] for ims in images]
    prompts = [
        prompt_ids(for_images(processor, ims), it.messages) for it, ims in zip(items, pictures)
    ]
    flat = [pair for ims in images for pair in ims]
    if cache is not None and flat:
        pics, hashes = [im for im, _ in flat], [h for _, h in flat]
        gen = {**gen, "encoder_features": cache.batch_features(model, processor, pics, hashes)}
    return generate_batch(model, processor, prompts, pictures, **gen)


def _load_images(item: EvalItem) -> list[tuple[Any, str]]:
    return [load_image_and_hash(p) for p in item.image_paths]


def _score(items: list[EvalItem], preds: list[str]) -> list[float]:
    """Per-item scores, computed per group so CIDEr's IDF comes from its own group."""
    scores = [0.0] * len(items)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[it.key].append(i)
    for idx in groups.values():
        metric = items[idx[0]].metric
        values = item_scores(metric, [preds[i] for i in idx], [items[i].references for i in idx])
        for i, v in zip(idx, values):
            scores[i] = float(v)
    return scores


def _ordered_keys(items: list[EvalItem]) -> list[str]:
    """Group keys in a stable order: families as report.order_families orders them, each
    family's own group before its "family/metric" groups."""
    families = order_families([it.family for it in items])
    keys = {it.key: (families.index(it.family), it.key != it.family, it.key) for it in items}
    return sorted(keys, key=keys.__getitem__)


def _check_options(batch_size: int, max_new_tokens: int, num_beams: int) -> None:
    for field, value in (
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
        ("num_beams", num_beams),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(field, f"must be a positive integer, got {value!r}")


def evaluate(
    model: Any,
    processor: Any,
    records_files: str | Path | Iterable[str | Path],
    out_dir: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    metric: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    name: str | None = None,
    model_dir: str | Path | None = None,
    feature_cache: bool = False,
) -> dict[str, Any]:
    """Answer and score every record; return the results dict (what results.json holds).

    With `out_dir`: also write answers.jsonl (one line per evaluated record: id, family, metric,
    question, reference, prediction, score; plus references when there are several), results.json, results.md and results.png.
    model_dir: the model's directory (default: the one it was loaded from); name: the run's name
    in comparisons (default: that directory's name). Greedy unless num_beams > 1.
    feature_cache: read the encoders' outputs from the feature cache (docs/training.md), adding
    the images it lacks: runs that share frozen encoders then encode a test set once.
    """
    _check_options(batch_size, max_new_tokens, num_beams)
    files = [records_files] if isinstance(records_files, str | Path) else list(records_files)
    items = load_items(files, metric=metric, limit=limit)
    model_dir = str(model_dir or getattr(model, "name_or_path", "") or "model")
    gen = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
    cache = None
    if feature_cache:
        from polyvis.train.feature_cache import FeatureCache

        cache = FeatureCache.for_model(model, processor)
    start = time.perf_counter()
    done: list[EvalItem] = []
    preds: list[str] = []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    bar = progress_bar(progress, label="eval", fields="skipped {task.fields[skipped]}")
    task = bar.add_task("eval", total=len(items), skipped=0)
    with bar:
        for b in range(0, len(items), batch_size):
            batch, images = [], []
            for it in items[b : b + batch_size]:
                try:
                    images.append(_load_images(it))
                    batch.append(it)
                except ImageError as err:  # one bad image costs its record, not the run
                    skipped[err.reason] += 1
                    skipped_ids.append(it.id)
            if batch:
                preds += _predict(model, processor, batch, images, gen, cache)
                done += batch
            bar.update(task, advance=len(items[b : b + batch_size]), skipped=len(skipped_ids))
    if cache is not None:
        cache.flush()
    if not done:
        raise DataError(
            f"no record could be evaluated: {len(skipped_ids)} skipped ({dict(skipped)})"
        )
    scores = _score(done, preds)
    by_key: dict[str, list[float]] = defaultdict(list)
    for it, s in zip(done, scores):
        by_key[it.key].append(s)
    keys = _ordered_keys(done)
    group_scores = {k: sum(by_key[k]) / len(by_key[k]) for k in keys}
    metric_of = {it.key: it.metric for it in done}
    results: dict[str, Any] = {
        "name": name or Path(model_dir).name,
        "model": model_dir,
        "config": model_config_summary(model, model_dir),
        "scores": group_scores,
        "overall": sum(group_scores.values()) / len(group_scores),
        "n": {k: len(by_key[k]) for k in keys},
        "metrics": {k: metric_of[k] for k in keys},
        "seconds": round(time.perf_counter() - start, 3),
        "skipped": dict(skipped),
        "skipped_ids": skipped_ids,
        "settings": {
            "data": [str(f) for f in files],
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "metric": metric,
            "limit": limit,
            "feature_cache": feature_cache,
        },
    }
    if cache is not None:  # images whose features were read from the cache, and those encoded
        results["feature_cache"] = dict(cache.served)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_answers(out / ANSWERS_FILE, done, preds, scores)
        write_report(results, out)
    return results


def _write_answers(
    path: Path, items: list[EvalItem], preds: list[str], scores: list[float]
) -> None:
    with path.open("w", encoding="utf-8") as f:
        for it, p, s in zip(items, preds, scores):
            row = {
                "id": it.id,
                "family": it.family,
                "metric": it.metric,
                "question": it.question,
                "reference": it.references[0],
                "prediction": p,
                "score": s,
            }
            if len(it.references) > 1:  # TextCaps-style records: every reference counts
                row["references"] = it.references
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
