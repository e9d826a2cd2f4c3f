"""The tables of the HTML reports: one run's, and an ablation's with confidence intervals drawn
as small inline SVGs (a line from the low to the high end, a dot at the mean)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from polyvis.eval.metrics import FAMILY_METRICS
from polyvis.eval.report import fmt_score, order_families, overall

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (a 95 % two-sided interval).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float


@dataclass
class Table:
    """A table's header and rows of text; the first `left` columns are text, the others numbers
    (right-aligned). `intervals`: one per row (or None), drawn in a last column."""

    columns: list[str]
    rows: list[list[str]]
    left: int = 1
    intervals: list[Interval | None] | None = None
    interval_label: str = "95 % CI"


def t975(df: int) -> float:
    """Student's t 0.975 quantile; past 30 degrees of freedom 1.96 + 2.37/df (within 0.002)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.37 / df


def seed_interval(mean: float, std: float, n: int) -> Interval | None:
    """The 95 % interval of a mean over n seeds (Student's t); None for a single seed."""
    if n < 2:
        return None
    half = t975(n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def interval_svg(intervals: Sequence[Interval | None], row: int, width: int = 180) -> str:
    """Row `row`'s interval on a scale shared by all rows (so rows compare by eye)."""
    mine = intervals[row]
    if mine is None:
        return ""
    known = [i for i in intervals if i is not None]
    lo, hi = min(i.lo for i in known), max(i.hi for i in known)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return round((v - lo) / (hi - lo) * width, 1)

    a, b, m = x(mine.lo), x(mine.hi), x(mine.mean)
    label = f"{mine.mean:.1f} [{mine.lo:.1f}, {mine.hi:.1f}]"
    return (
        f'<svg class="ci" width="{width}" height="14" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>"
        f'<line x1="{a}" x2="{b}" y1="7" y2="7"/><line x1="{a}" x2="{a}" y1="3" y2="11"/>'
        f'<line x1="{b}" x2="{b}" y1="3" y2="11"/><circle cx="{m}" cy="7" r="3.5"/></svg>'
    )


def eval_table(results: Mapping[str, Any]) -> Table:
    """One run: family, metric, score, n and an overall row (as results.md's table)."""
    scores, counts = results["scores"], results.get("n", {})
    metrics = results.get("metrics") or {}
    rows = []
    for fam in order_families(list(scores)):
        metric = metrics.get(fam) or FAMILY_METRICS.get(fam, "exact_match")
        rows.append([fam, metric, fmt_score(scores[fam]), str(counts.get(fam, "-"))])
    total = str(sum(counts.values())) if counts else "-"
    rows.append(["overall", "", fmt_score(overall(dict(results))), total])
    return Table(["family", "metric", "score", "n"], rows, left=2)


def mean_spread(stat: Mapping[str, float]) -> str:
    """ "mean ± std" over seeds; one seed's score with "(n=1)": its std of 0 is no spread."""
    if int(stat.get("n", 1)) < 2:
        return f"{stat['mean']:.1f} (n=1)"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def summary_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    """An ablation summary (cell -> column -> {mean, std, n}, points over seeds), best mean
    first: mean ± std per column (`mean_spread`), the seeds, and the mean's 95 % interval over the seeds."""
    if not summary:
        raise ValueError("the ablation summary has no cells")
    cells = sorted(summary, key=lambda c: -summary[c]["mean"]["mean"])
    cols = list(summary[cells[0]])
    rows, intervals = [], []
    for cell in cells:
        stats = summary[cell]
        mean = stats["mean"]
        ci = seed_interval(mean["mean"], mean["std"], int(mean.get("n", 1)))
        rows.append(
            [cell]
            + [mean_spread(stats[c]) for c in cols]
            + [str(int(mean.get("n", 1))), "-" if ci is None else f"[{ci.lo:.1f}, {ci.hi:.1f}]"]
        )
        intervals.append(ci)
    columns = ["cell", *cols, "seeds", "mean, 95 % CI"]
    return Table(columns, rows, intervals=intervals, interval_label="(Student's t over seeds)")


def leaderboard_table(doc: Mapping[str, Any]) -> Table:
    """A leaderboard document's cells, best mean first: each family's and the mean's bootstrap
    95 % interval, and p_best; then its floor (one constant answer per question type), unranked."""
    cells = sorted(doc["cells"], key=lambda c: -c["mean"]["mean"])
    fams = list(cells[0]["families"]) if cells else []

    def ci(entry: Mapping[str, Any]) -> str:
        lo, hi = entry["ci"]
        return f"{entry['mean']:.1f} [{lo:.1f}, {hi:.1f}]"

    rows, intervals = [], []
    for c in cells:
        rows.append(
            [str(c.get("rank", "")), str(c["name"])]
            + [ci(c["families"][f]) for f in fams]
            + [ci(c["mean"]), f"{c['p_best']:.2f}" if "p_best" in c else "-"]
        )
        lo, hi = c["mean"]["ci"]
        intervals.append(Interval(c["mean"]["mean"], lo, hi))
    floor = doc.get("floor")
    if floor and cells:
        rows.append(
            ["-", f"(floor: {floor['name']})", *(ci(floor["families"][f]) for f in fams)]
            + [ci(floor["mean"]), "-"]
        )
        intervals.append(Interval(floor["mean"]["mean"], *floor["mean"]["ci"]))
    columns = ["rank", "cell", *fams, "mean", "p_best"]
    return Table(
        columns, rows, left=2, intervals=intervals, interval_label="mean, 95 % CI (bootstrap)"
    )
