"""Evaluation reports: one run's results.md / results.png, and a comparison of several runs
(results.html, the self-contained HTML report with the answers, is polyvis.eval.html).

A results dict (what an evaluation run writes to results.json) looks like
    {"model": "nano-clip", "scores": {"scene": 0.81, "ocr": 0.42}, "overall": 0.615,
     "n": {"scene": 100, "ocr": 100}, "metrics": {"scene": "exact_match", ...}, "name": "clip"}
Only "model" and "scores" are required; other fields are kept as they are.
Plots use matplotlib's Agg canvas directly (no pyplot), so no display or global backend is touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyvis.errors import DataError
from polyvis.eval.metrics import FAMILY_METRICS

RESULTS_FILE = "results.json"
MISSING = "-"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check the fields a report needs; raise DataError naming `source` and the field."""
    if not isinstance(results, dict):
        raise DataError(f"{source}: expected a JSON object, got {type(results).__name__}")
    if not isinstance(results.get("model"), str):
        raise DataError(f"{source}: 'model' must be a string")
    scores = results.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise DataError(f"{source}: 'scores' must be a non-empty object of family -> score")
    for family, value in scores.items():
        if not _is_number(value):
            raise DataError(f"{source}: scores.{family} must be a number, got {value!r}")
    counts = results.get("n", {})
    if not isinstance(counts, dict) or any(
        not isinstance(v, int) or isinstance(v, bool) for v in counts.values()
    ):
        raise DataError(f"{source}: 'n' must be an object of family -> integer count")
    if "overall" in results and not _is_number(results["overall"]):
        raise DataError(f"{source}: 'overall' must be a number")
    return results


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json (or DIR/results.json when `path` is a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: results file not found")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    return validate_results(results, str(path))


def order_families(families: Sequence[str]) -> list[str]:
    """FAMILY_METRICS order first (scene, ocr, latex, ...), then others as first seen."""
    seen = list(dict.fromkeys(families))
    known = [f for f in FAMILY_METRICS if f in seen]
    return known + [f for f in seen if f not in FAMILY_METRICS]


def overall(results: dict[str, Any]) -> float:
    """The results' "overall", else the unweighted mean over families."""
    if "overall" in results:
        return float(results["overall"])
    scores = results["scores"]
    return float(sum(scores.values()) / len(scores))


def fmt_score(x: float | None) -> str:
    return MISSING if x is None else f"{x:.4f}"


def results_table(results: dict[str, Any]) -> str:
    """One run as a markdown table: family, metric, score, n, then an overall row."""
    validate_results(results)
    scores, counts = results["scores"], results.get("n", {})
    metrics = results.get("metrics") or {}
    lines = ["| family | metric | score | n |", "|---|---|---:|---:|"]
    for fam in order_families(list(scores)):
        metric = metrics.get(fam) or FAMILY_METRICS.get(fam, "exact_match")
        lines.append(
            f"| {fam} | {metric} | {fmt_score(scores[fam])} | {counts.get(fam, MISSING)} |"
        )
    total = sum(counts.values()) if counts else MISSING
    lines.append(f"| **overall** |  | {fmt_score(overall(results))} | {total} |")
    return "\n".join(lines)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of one run's per-family scores, with the overall score as a dashed line."""
    families = order_families(list(results["scores"]))
    values = [results["scores"][f] for f in families]
    fig = _new_figure(max(4.0, 1.0 + 0.9 * len(families)), 3.5)
    ax = fig.add_subplot()
    bars = ax.bar(families, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(overall(results), color="gray", linestyle="--", linewidth=1, label="overall")
    ax.set_ylabel("score")
    ax.set_title(results["model"])
    ax.set_ylim(0, max(1.0, max(values) * 1.15))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(
    results: dict[str, Any], out_dir: str | Path, write_json: bool = True
) -> dict[str, Path]:
    """Write results.md (table) and results.png (bar chart), and results.json unless told not to.

    Returns the written paths by kind ("json", "md", "png").
    """
    validate_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if write_json:
        paths["json"] = out / RESULTS_FILE
        paths["json"].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    paths["md"] = out / "results.md"
    paths["md"].write_text(
        f"# Results: {results['model']}\n\n{results_table(results)}\n", encoding="utf-8"
    )
    paths["png"] = plot_results(results, out / "results.png")
    return paths


# ---- comparing runs ------------------------------------------------------------------------


def run_names(result_dirs: Sequence[Path], runs: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's "name", else its folder's name; repeats get " (2)", " (3)", ..."""
    names: list[str] = []
    for d, res in zip(result_dirs, runs):
        base = str(res.get("name") or Path(d).resolve().name)
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


def compare_rows(runs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[float | None]]]:
    """Columns (families in order, then "mean") and one row of values per run.

    A family a run lacks is None; "mean" is the unweighted mean over the run's own families.
    """
    families = order_families([f for res in runs for f in res["scores"]])
    rows = []
    for res in runs:
        scores = res["scores"]
        row: list[float | None] = [scores.get(f) for f in families]
        row.append(sum(scores.values()) / len(scores))
        rows.append(row)
    return [*families, "mean"], rows


def md_cell(text: str) -> str:
    """Text for a Markdown table cell: a run or cell name may hold " | " (an ablation's run
    names, a grid with several adapters), which would otherwise split the cell."""
    return text.replace("|", "\\|")


def differing_counts(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The families whose item count ("n") differs between the runs that report one: their
    scores are over different items, so a difference need not be the model's."""
    families = order_families([f for res in runs for f in res["scores"]])
    out = []
    for fam in families:
        counts = {res.get("n", {}).get(fam) for res in runs if fam in res["scores"]} - {None}
        if len(counts) > 1:
            out.append(fam)
    return out


def _answer_ids(result_dir: Path) -> dict[str, set[tuple[str, int]]] | None:
    """Per score group, the (id, occurrence) of each item DIR/answers.jsonl holds; None when
    there is no readable answers file (older runs, or only results.json copied)."""
    from polyvis.eval.html_items import group_of, read_answers

    try:
        rows = read_answers(result_dir / "answers.jsonl")
    except DataError:
        return None
    ids: dict[str, set[tuple[str, int]]] = {}
    times: dict[tuple[str, str], int] = {}  # an id asked twice is two items, as html joins them
    for row in rows:
        group = group_of(row["family"], row.get("metric"))
        k = times[group, row["id"]] = times.get((group, row["id"]), 0) + 1
        ids.setdefault(group, set()).add((row["id"], k))
    return ids


def item_mismatch_note(
    names: Sequence[str], runs: Sequence[dict[str, Any]], dirs: Sequence[Path] = ()
) -> str | None:
    """One line naming the families the runs score on different items (counts from "n"; with
    every run's answers.jsonl, also the same count of different ids); None when none do."""
    parts = []
    uneven = differing_counts(runs)
    for fam in uneven:
        counts = [
            f"{res['n'][fam]} ({n})" for n, res in zip(names, runs) if fam in res.get("n", {})
        ]
        parts.append(f"{fam} n = {', '.join(counts)}")
    answers = [_answer_ids(Path(d)) for d in dirs]
    if dirs and all(a is not None for a in answers):
        for fam in order_families([f for res in runs for f in res["scores"]]):
            sets = {frozenset(a[fam]) for a in answers if a is not None and fam in a}
            if fam not in uneven and len(sets) > 1:
                parts.append(f"{fam} (same n, different item ids)")
    if not parts:
        return None
    return "Runs are scored on different items: " + "; ".join(parts) + "."


def compare_cells(runs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(columns, each run's formatted scores): one column per family, then the mean. A family
    whose item count differs between runs shows each run's n beside its score."""
    columns, rows = compare_rows(runs)
    uneven = set(differing_counts(runs))
    cells = []
    for row, res in zip(rows, runs):
        line = []
        for col, v in zip(columns, row):
            n = res.get("n", {}).get(col) if col in uneven and v is not None else None
            line.append(fmt_score(v) + (f" (n={n})" if n is not None else ""))
        cells.append(line)
    return columns, cells


def compare_table(names: Sequence[str], runs: Sequence[dict[str, Any]]) -> str:
    """Markdown table of `compare_cells`: one row per run."""
    columns, cells = compare_cells(runs)
    lines = [
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, line in zip(names, cells):
        lines.append(f"| {md_cell(name)} | " + " | ".join(line) + " |")
    return "\n".join(lines)


def plot_compare(names: Sequence[str], runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bar chart: one group per family (and the mean), one bar per run."""
    columns, rows = compare_rows(runs)
    fig = _new_figure(max(5.0, 1.5 + 0.35 * len(columns) * max(2, len(runs))), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    top = 1.0
    for i, (name, row) in enumerate(zip(names, rows)):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j, v in enumerate(row) if v is not None]
        vs = [v for v in row if v is not None]
        ax.bar(xs, vs, width=width, label=name)
        top = max(top, *vs)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("score")
    ax.set_ylim(0, top * 1.25)  # headroom for the legend
    ax.legend(fontsize=8, ncols=min(len(runs), 4), loc="upper left")
    ax.set_title("comparison")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def compare(result_dirs: Sequence[str | Path], out: str | Path) -> str:
    """Read DIR/results.json for each dir; write OUT/compare.md and OUT/compare.png.

    Returns the markdown table, and under it a line naming the families the runs score on
    different items when some do. A missing or malformed results.json is a DataError naming it.
    """
    if not result_dirs:
        raise DataError("compare: no result directories given")
    dirs = [Path(d) for d in result_dirs]
    runs = [load_results(d / RESULTS_FILE) for d in dirs]
    names = run_names(dirs, runs)
    table = compare_table(names, runs)
    note = item_mismatch_note(names, runs, dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = "\n".join(f"- {n}: `{d / RESULTS_FILE}`" for n, d in zip(names, dirs))
    parts = ["# Comparison", table]
    if note:
        parts.append(note)
    if len({frozenset(r["scores"]) for r in runs}) > 1:
        parts.append("Runs cover different families; each mean is over the run's own families.")
    parts += ["Sources:", sources]
    (out / "compare.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    plot_compare(names, runs, out / "compare.png")
    return table + (f"\n\n{note}" if note else "")
