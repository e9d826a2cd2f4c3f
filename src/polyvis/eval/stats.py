"""Confidence intervals, paired comparisons and rank probabilities for a grid of evaluated cells.

A cell is one model recipe run over several seeds; each seed's evaluation scores the same test
items. Scores are in points (0-100). The statistics come from one paired two-level bootstrap:

- each replicate resamples seed positions with replacement, and within each family the test
  items with replacement (Owen's "pigeonhole" bootstrap for a seeds x items crossed design);
- every cell uses the same resampled items, and every cell with the same number of seeds the
  same resampled seed positions, so differences between cells are paired;
- a cell's score is the unweighted mean over families of the family means.

    cells = [cell_scores(name, {0: run0 / "eval/answers.jsonl", ...}) for name, ... in grid]
    stats = leaderboard(cells, baselines=["clip", "dino", "vary"])

docs/evaluation.md ("Statistics") describes every number and cites the methods.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyvis.errors import DataError
from polyvis.eval.metrics import FAMILY_METRICS, group_top
from polyvis.eval.report import order_families

CI_LEVEL = 0.95
BATCH = 250  # replicates per batch of index draws: bounds memory, keeps numpy calls large


def _group_key(family: str, metric: Any) -> str:
    """The runner's score group: the family, or "family/metric" for a non-default metric, so no
    group mixes two metrics (chart's to_table questions are "chart/edit_similarity")."""
    if metric is None or metric == FAMILY_METRICS.get(family, "exact_match"):
        return family
    return f"{family}/{metric}"


def question_type(item: str) -> str:
    """The question type the synthetic families end an item's id with ("mixed-test-000003-describe"
    -> "describe"); "all" for an id that ends in a number (one question per image)."""
    last = item.rsplit("-", 1)[-1]
    return "all" if last.isdigit() or last == item else last


def load_item_scores(answers: Path, by_type: bool = False) -> dict[str, dict[str, float]]:
    """{group: {item id: score}} from an answers.jsonl that `polyvis eval` wrote.

    The group is the row's "family", or "family/metric" when the row uses another metric than
    its family's default (as in results.json); with `by_type`, "family/type" for every row (the
    type from the id, `question_type`). Scores must lie in 0..1, or 0..10 for CIDEr, which is
    divided by its 10 here (`group_top`): a leaderboard's points are CIDEr x 10.
    """
    answers = Path(answers)
    if not answers.is_file():
        raise DataError(f"{answers}: answers file not found")
    out: dict[str, dict[str, float]] = {}
    for n, line in enumerate(answers.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item, family, score = str(row["id"]), str(row["family"]), row["score"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{answers}:{n}: not an answers row ({err!r})") from None
        ok = isinstance(score, int | float) and not isinstance(score, bool)
        metric_group = _group_key(family, row.get("metric"))
        top = group_top(metric_group)
        if not ok or not math.isfinite(score) or not 0 <= score <= top:
            raise DataError(
                f"{answers}:{n}: record {item}: score must be in 0..{top:g}, got {score!r}"
            )
        key = f"{family}/{question_type(item)}" if by_type else metric_group
        group = out.setdefault(key, {})
        if item in group:
            raise DataError(f"{answers}:{n}: record {item} appears twice in {family}")
        group[item] = float(score) / top
    if not out:
        raise DataError(f"{answers}: no answers")
    return out


@dataclass
class CellScores:
    """One cell's item scores: per family an array (n_seeds, n_items) in points, rows in the
    order of `seeds`, columns in the order of `items[family]` (sorted ids, shared by all cells).
    `meta` (encoders, fusion, adapter, train_seconds, ...) is copied into the cell's stats."""

    name: str
    seeds: list[int]
    families: dict[str, np.ndarray]
    items: dict[str, list[str]]
    meta: dict[str, Any] = field(default_factory=dict)


def _item_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> str:
    if set(a) != set(b):
        return f"families {sorted(set(a) ^ set(b))} in one but not the other"
    for fam in sorted(a):
        extra, missing = set(a[fam]) - set(b[fam]), set(b[fam]) - set(a[fam])
        if extra or missing:
            example = sorted(extra or missing)[0]
            return f"{fam}: {len(extra)} extra and {len(missing)} missing ids (e.g. {example})"
    return ""


def cell_scores(
    name: str, runs: dict[int, Path], meta: dict[str, Any] | None = None, by_type: bool = False
) -> CellScores:
    """A cell's scores from {seed: answers.jsonl}; every seed must have scored the same items.
    With `by_type` the groups are "family/question type" (load_item_scores)."""
    if not runs:
        raise DataError(f"cell {name}: no runs")
    seeds = sorted(runs)
    loaded = {s: load_item_scores(Path(runs[s]), by_type) for s in seeds}
    first = loaded[seeds[0]]
    for s in seeds[1:]:
        diff = _item_diff(loaded[s], first)
        if diff:
            raise DataError(
                f"cell {name}: seed {s} ({runs[s]}) scored other items than seed {seeds[0]}: {diff}"
            )
    items = {fam: sorted(first[fam]) for fam in order_families(list(first))}
    families = {
        fam: np.array([[loaded[s][fam][i] for i in ids] for s in seeds], dtype=np.float64) * 100
        for fam, ids in items.items()
    }
    return CellScores(name, seeds, families, items, dict(meta or {}))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (Holm 1979)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adjusted[i] = running
    return adjusted


def _check(cells: list[CellScores], baselines: list[str]) -> list[str]:
    if not cells:
        raise DataError("leaderboard: no cells")
    names = [c.name for c in cells]
    for c in cells:
        if names.count(c.name) > 1:
            raise DataError(f"cell {c.name}: name used twice")
        if c.items != cells[0].items:
            raise DataError(
                f"cell {c.name}: scored other test items than cell {cells[0].name}; every cell "
                "must be evaluated on the same items"
            )
        for fam, x in c.families.items():
            if x.shape != (len(c.seeds), len(c.items[fam])):
                raise DataError(f"cell {c.name}: {fam} scores have shape {x.shape}")
    for b in baselines:
        if b not in names:
            raise DataError(f"baseline {b}: no such cell (cells: {', '.join(names)})")
    return order_families(list(cells[0].items))


def _replicates(cells: list[CellScores], fams: list[str], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap family means, shape (n_cells, n_families, n_boot).

    Resampling with replacement is drawn as multinomial counts (the same distribution as drawn
    indices), so a replicate's mean is w_seeds @ X @ w_items for every cell at once.
    """
    rng = np.random.default_rng(seed)
    seed_counts = sorted({len(c.seeds) for c in cells})
    by_count = {s: [k for k, c in enumerate(cells) if len(c.seeds) == s] for s in seed_counts}
    stacked = {
        (s, fam): np.stack([cells[k].families[fam] for k in by_count[s]])
        for s in seed_counts
        for fam in fams
    }
    out = np.empty((len(cells), len(fams), n_boot))
    for start in range(0, n_boot, BATCH):
        b = min(BATCH, n_boot - start)
        item_w = {}
        for fam in fams:
            n = len(cells[0].items[fam])
            item_w[fam] = rng.multinomial(n, np.full(n, 1.0 / n), size=b) / n
        seed_w = {s: rng.multinomial(s, np.full(s, 1.0 / s), size=b) / s for s in seed_counts}
        for s in seed_counts:
            for f, fam in enumerate(fams):
                per_seed = stacked[s, fam] @ item_w[fam].T  # (cells, seeds, b)
                means = np.einsum("csb,bs->cb", per_seed, seed_w[s])
                out[by_count[s], f, start : start + b] = means
    return out


def _ci(x: np.ndarray) -> list[float]:
    tail = (1 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(x, [tail, 100 - tail])
    return [float(lo), float(hi)]


def leaderboard(
    cells: list[CellScores], baselines: list[str], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Every cell's family means and mean with 95 % CIs, rank and rank probabilities, and each
    non-baseline cell against the best baseline (highest mean) with Holm-corrected p-values.

    Point estimates are the plain means; CIs are bootstrap percentiles. Deterministic for `seed`.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    fams = _check(cells, baselines)
    fam_means = np.array([[c.families[f].mean() for f in fams] for c in cells])  # (C, F)
    means = fam_means.mean(axis=1)
    reps = _replicates(cells, fams, n_boot, seed)
    cell_reps = reps.mean(axis=1)  # (C, B)
    # Ties (identical cells) are broken by cell order, so each replicate ranks a permutation.
    order = np.argsort(-cell_reps, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(cells))[:, None], axis=0)
    rank_probs = np.stack([(ranks == r).mean(axis=1) for r in range(len(cells))], axis=1)
    point_rank = np.argsort(-means, kind="stable")
    rows = []
    for k, c in enumerate(cells):
        seed_means = np.mean([c.families[f].mean(axis=1) for f in fams], axis=0)
        rows.append(
            {
                "name": c.name,
                **c.meta,
                "seeds": list(c.seeds),
                "seed_means": [float(x) for x in seed_means],
                "families": {
                    f: {"mean": float(fam_means[k, j]), "ci": _ci(reps[k, j])}
                    for j, f in enumerate(fams)
                },
                "mean": {"mean": float(means[k]), "ci": _ci(cell_reps[k])},
                "rank": int(np.flatnonzero(point_rank == k)[0]) + 1,
                "p_best": float(rank_probs[k, 0]),
                "rank_probabilities": [float(x) for x in rank_probs[k]],
            }
        )
    comparisons = []
    if baselines:
        index = {c.name: k for k, c in enumerate(cells)}
        best = max(baselines, key=lambda b: means[index[b]])
        for k, c in enumerate(cells):
            if c.name in baselines:
                continue
            d = cell_reps[k] - cell_reps[index[best]]
            two_sided = 2 * min(float((d <= 0).mean()), float((d >= 0).mean()))
            comparisons.append(
                {
                    "cell": c.name,
                    "vs": best,
                    "diff": float(means[k] - means[index[best]]),
                    "ci": _ci(d),
                    "p": min(1.0, max(two_sided, 1.0 / n_boot)),
                }
            )
        for comp, adj in zip(comparisons, holm([c["p"] for c in comparisons])):
            comp["p_holm"] = adj
    return {
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": CI_LEVEL},
        "baselines": list(baselines),
        "families": fams,
        "cells": rows,
        "comparisons": comparisons,
    }


def question_type_stats(
    runs: dict[str, dict[int, Path]], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Each cell's mean and 95 % CI per "family/question type", from {cell: {seed: answers}}.

    "two_expert" lists the groups that need two experts at once (the synthetic families'
    `two_expert_tasks`), "groups" every group in family order.
    """
    from polyvis.data.synthetic.base import two_expert_groups

    cells = [cell_scores(name, answers, by_type=True) for name, answers in runs.items()]
    stats = leaderboard(cells, [], n_boot, seed)
    need_two = set(two_expert_groups())
    fams = order_families([g.split("/", 1)[0] for g in stats["families"]])
    groups = sorted(stats["families"], key=lambda g: fams.index(g.split("/", 1)[0]))  # stable
    return {
        "groups": groups,
        "two_expert": [g for g in groups if g in need_two],
        "cells": {row["name"]: row["families"] for row in stats["cells"]},
    }
