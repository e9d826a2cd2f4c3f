"""The leaderboard report: OUT.json, OUT.md and OUT.png from `polyvis.eval.stats.leaderboard`.

    stats = leaderboard(cells, baselines=["clip", "dino", "vary"])
    write_leaderboard(stats, Path("docs/leaderboard"), meta={"command": ..., "date": ...,
                      "machine": ..., "wall_seconds": ...})

Scores are in points (0-100); the JSON's numbers are rounded to 4 decimals (points) and
6 decimals (probabilities), which is far below the bootstrap's own noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polyvis.errors import DataError
from polyvis.eval.report import md_cell
from polyvis.paths import atomic_file, write_json_atomic, write_text_atomic
from polyvis.progress import duration

META_KEYS = ("command", "date", "machine", "wall_seconds")
# Per-cell fields in the order the JSON lists them; anything else the caller adds follows.
CELL_KEYS = (
    "name", "encoders", "fusion", "adapter", "seeds", "seed_means", "families", "mean", "rank",
    "p_best", "rank_probabilities", "train_seconds", "flops_per_step",
)  # fmt: skip
PROBABILITY_KEYS = {"p", "p_holm", "p_best", "rank_probabilities", "level"}


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, dict):
        return {k: _round(v, 6 if k in PROBABILITY_KEYS else digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    if isinstance(value, float):
        return round(value, digits)
    return value


def _document(stats: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    for key in META_KEYS:
        if key not in meta:
            raise DataError(f"leaderboard meta: missing '{key}'")
    for key in ("cells", "comparisons"):
        if key not in stats:
            raise DataError(f"leaderboard stats: missing '{key}'")
    cells = []
    for cell in stats["cells"]:
        known = {k: cell[k] for k in CELL_KEYS if k in cell}
        cells.append(known | {k: v for k, v in cell.items() if k not in known})
    rest = {k: v for k, v in stats.items() if k not in ("cells", "comparisons")}
    doc = {**meta, **rest, "cells": cells, "comparisons": stats["comparisons"]}
    return _round(doc)


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def _sorted_cells(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(doc["cells"], key=lambda c: -c["mean"]["mean"])


def _main_table(doc: dict[str, Any]) -> str:
    cells = _sorted_cells(doc)
    fams = list(cells[0]["families"]) if cells else []
    extra = [k for k in ("train_seconds", "flops_per_step") if any(k in c for c in cells)]
    labels = {"train_seconds": "train s", "flops_per_step": "FLOPs / step"}
    head = ["rank", "cell", *fams, "**mean**", "p_best", *(labels[k] for k in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" + "---|" + "---:|" * (len(head) - 2)]
    for c in cells:
        row = [str(c["rank"]), md_cell(c["name"]), *(_ci(c["families"][f]) for f in fams)]
        row += [f"**{_ci(c['mean'])}**", f"{c['p_best']:.2f}"]
        for k in extra:
            v = c.get(k)
            row.append("-" if v is None else f"{v:.0f}" if k == "train_seconds" else f"{v:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _type_table(doc: dict[str, Any]) -> str | None:
    """Per cell, every question type of the families that have a two-expert type (e.g. mixed:
    read, colour and describe side by side); None when no family has one."""
    qt = doc.get("question_types") or {}
    fams = {g.split("/", 1)[0] for g in qt.get("two_expert", [])}
    groups = [g for g in qt.get("groups", []) if g.split("/", 1)[0] in fams]
    if not groups:
        return None
    two = set(qt["two_expert"])
    head = ["cell", *(f"**{g}** (two experts)" if g in two else g for g in groups)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(groups)]
    for c in _sorted_cells(doc):
        row = qt["cells"][c["name"]]
        lines.append("| " + " | ".join([md_cell(c["name"]), *(_ci(row[g]) for g in groups)]) + " |")
    if qt.get("floor"):  # one constant answer per question type, chosen on val
        floor = qt["floor"]
        lines.append("| " + " | ".join(["(floor)", *(_ci(floor[g]) for g in groups)]) + " |")
    return "\n".join(lines)


def _floor_note(doc: dict[str, Any]) -> str | None:
    """What one constant answer per question type, chosen on val, scores on test."""
    floor = doc.get("floor")
    if not floor:
        return None
    fams = ", ".join(f"{f} {_ci(v)}" for f, v in floor["families"].items())
    return (
        f"**Floor.** One constant answer per question type, chosen on val, scores "
        f"**{_ci(floor['mean'])}** on test ({fams}; 95 % CIs over test items; the constants and "
        "answers are in the JSON's `floor`). A cell near it does about as well as answering by "
        "the question's type alone."
    )


def _p(p: float | None, floor: float) -> str:
    if p is None:
        return "-"
    return f"≤ {p:.4f}" if p <= floor else f"{p:.4f}"  # no replicate crossed 0


def _comparison_table(doc: dict[str, Any]) -> str:
    floor = 1 / doc.get("bootstrap", {}).get("n_boot", float("inf"))
    lines = ["| cell | vs | diff [95 % CI] | p | p (Holm) |", "|---|---|---:|---:|---:|"]
    for c in sorted(doc["comparisons"], key=lambda c: -c["diff"]):
        lo, hi = c["ci"]
        lines.append(
            f"| {md_cell(c['cell'])} | {md_cell(c['vs'])} | {c['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}] | "
            f"{_p(c.get('p'), floor)} | {c['p_holm']:.4f} |"
        )
    return "\n".join(lines)


def _how_to_read(doc: dict[str, Any]) -> str:
    boot = doc.get("bootstrap", {})
    n_boot = boot.get("n_boot", "?")
    return (
        "**How to read this.** Scores are points (0-100) on the test split. A cell's mean is the "
        "unweighted mean over families of the family means, averaged over its seeds. Brackets "
        f"hold 95 % confidence intervals from a paired bootstrap ({n_boot} replicates) that "
        "resamples both seeds and test items, with the same draws for every cell. `p_best` is "
        "the share of replicates in which the cell ranks first. Each comparison is a cell minus "
        "the best single expert, on the same resampled seeds and items; its p-value is "
        "two-sided and Holm-corrected over all comparisons. A difference whose interval excludes "
        "0 and whose Holm p is below 0.05 is one the data support; overlapping per-cell "
        "intervals alone do not show that two cells are equal, since the paired difference is "
        'much tighter than either mean. See docs/evaluation.md, "Statistics".'
    )


def leaderboard_markdown(doc: dict[str, Any]) -> str:
    """The .md page for a leaderboard document (what OUT.json holds)."""
    parts = [
        "# Leaderboard",
        f"Command: `{doc['command']}`  \nDate: {doc['date']}  \nMachine: {doc['machine']}  \n"
        f"Wall time: {duration(float(doc['wall_seconds']))} ({float(doc['wall_seconds']):.0f} s)",
        _main_table(doc),
    ]
    floor = _floor_note(doc)
    if floor:
        parts.append(floor)
    if doc["comparisons"]:
        parts += ["## Against the best single expert", _comparison_table(doc)]
    types = _type_table(doc)
    if types:
        parts += [
            "## Questions that need two experts",
            "Each question type of the families that have one that no single expert answers, "
            "with 95 % CIs from the same bootstrap (every type of every family is in the JSON's "
            "`question_types`).",
            types,
        ]
    parts.append(_how_to_read(doc))
    return "\n\n".join(parts) + "\n"


def plot_leaderboard(doc: dict[str, Any], path: Path, title: str = "leaderboard") -> None:
    """Each cell's mean with its 95 % CI, best at the top; single experts (baselines) in grey;
    the floor (one constant answer per question type), when the document has one, dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = _sorted_cells(doc)[::-1]
    baselines = set(doc.get("baselines", []))
    fig = Figure(figsize=(7.0, 1.2 + 0.32 * len(cells)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, c in enumerate(cells):
        m, (lo, hi) = c["mean"]["mean"], c["mean"]["ci"]
        expert = c["name"] in baselines or ("fusion" in c and c["fusion"] is None)
        ax.errorbar(
            m, y, xerr=[[m - lo], [hi - m]], fmt="o", capsize=3,
            color="tab:gray" if expert else "tab:blue",
        )  # fmt: skip
    experts = [c for c in cells if c["name"] in baselines]
    if experts:
        best = max(c["mean"]["mean"] for c in experts)
        ax.axvline(best, color="tab:gray", linestyle=":", linewidth=1)
    floor = doc.get("floor")
    if floor:  # answering by question type alone
        ax.axvline(floor["mean"]["mean"], color="tab:red", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(cells)), [c["name"] for c in cells], fontsize=8)
    ax.set_ylim(-0.6, len(cells) - 0.4)
    ax.set_xlabel("mean score (points), 95 % CI")
    ax.grid(axis="x", alpha=0.3)
    key = "grey: single experts; dotted: the best one"
    key += "\ndashed red: the floor, one constant answer per question type" if floor else ""
    ax.set_title(f"{title} ({key})", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


def write_leaderboard(stats: dict[str, Any], out_stem: Path, meta: dict[str, Any]) -> dict:
    """Write OUT.json, OUT.md and OUT.png (OUT = `out_stem`); return the JSON document.

    `meta` needs "command", "date", "machine" and "wall_seconds"; it goes at the top of the JSON.
    Per-cell fields the caller added to `stats["cells"]` (encoders, fusion, adapter,
    train_seconds, flops_per_step, ...) are kept.
    """
    doc = _document(stats, meta)
    stem = str(out_stem)
    write_json_atomic(stem + ".json", doc)
    write_text_atomic(stem + ".md", leaderboard_markdown(doc))
    plot_leaderboard(doc, Path(stem + ".png"))
    return doc
