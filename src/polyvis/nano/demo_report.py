"""The demo's report: OUT/results.{json,md,png,html}, the printed table and a few example
answers."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from polyvis.nano.runs import RunSpec, family_scores, read_results


def collect_results(
    specs: list[RunSpec],
    seconds: dict[str, float],
    budget: dict[str, Any],
    quick: bool,
    elapsed: float,
) -> dict[str, Any]:
    """What OUT/results.json holds: per run its meta, family scores (points) and mean, and its
    training seconds (`seconds`, from train_runs); the machine, the budget and the time taken."""
    runs = []
    for spec in specs:
        scores = family_scores(read_results(spec))
        runs.append(
            {
                "name": spec.name,
                **spec.meta,
                "scores": scores,
                "mean": sum(scores.values()) / max(1, len(scores)),
                "train_seconds": seconds.get(spec.name, 0.0),
            }
        )
    cpus = os.cpu_count() or 1
    return {
        "runs": runs,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {cpus} cores",
        "seconds": elapsed,
        "budget": budget,
        "quick": quick,
    }


def write_report(out: Path, results: dict[str, Any], specs: list[RunSpec]) -> None:
    """Write OUT/results.json, results.md, results.png and results.html (the table, the plot and
    every run's answers side by side), and print the table and examples."""
    from polyvis.eval.report import compare_table, plot_compare

    runs = results["runs"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    as_results = [
        {"name": r["name"], "scores": {k: v / 100 for k, v in r["scores"].items()}} for r in runs
    ]
    table = compare_table([r["name"] for r in runs], as_results)
    (out / "results.md").write_text(_markdown(results, table), encoding="utf-8")
    plot_compare([r["name"] for r in runs], as_results, out / "results.png")
    write_demo_html(out, results, as_results, specs)
    if results["quick"]:
        print("\n" + quick_notice(results["budget"]))
    print("\n" + table)
    _print_examples(specs)
    print(
        f"\nresults: {out / 'results.md'}, {out / 'results.png'}, {out / 'results.html'}; "
        f"{results['seconds']:.0f} s in all"
    )


def write_demo_html(
    out: Path, results: dict[str, Any], as_results: list[dict[str, Any]], specs: list[RunSpec]
) -> Path:
    """OUT/results.html: the table and plot of results.md, and each run's test answers."""
    from polyvis.eval.html import Table, write_html_report
    from polyvis.eval.report import compare_rows, fmt_score

    names = [r["name"] for r in results["runs"]]
    columns, values = compare_rows(as_results) if as_results else ([], [])
    rows = [[n, *(fmt_score(v) for v in row)] for n, row in zip(names, values)]
    b = results["budget"]
    notes = [quick_notice(b)] if results["quick"] else []
    notes.append(
        f"Same budget for every model: {b['steps']} steps of batch {b['batch_size']}, {b['n']} "
        f"synthetic images per family. Machine: {results['machine']}; "
        f"{results['seconds']:.0f} s in all."
    )
    answers = {spec.name: spec.out / spec.eval_dir / "answers.jsonl" for spec in specs}
    records = list(dict.fromkeys(f for spec in specs for f in spec.eval_files))
    return write_html_report(
        out / "results.html",
        "polyvis demo: which encoders, mixed how?",
        Table(["run", *columns], rows),
        plot=out / "results.png",
        answers=answers,
        records=records,
        notes=notes,
    )


def quick_notice(budget: dict[str, Any]) -> str:
    """What `--quick` results say first: a smoke test, scores that mean nothing."""
    return (
        "SMOKE TEST (--quick): these numbers mean nothing. It only checks that every step runs "
        f"(data, experts, training, evaluation, report); {budget['steps']} training steps on "
        f"{budget['n']} images per family cannot learn the tasks. Run `polyvis demo` without "
        "--quick to compare the models."
    )


def _markdown(results: dict[str, Any], table: str) -> str:
    b = results["budget"]
    notice = f"**{quick_notice(b)}**\n\n" if results["quick"] else ""
    return (
        "# polyvis demo: which encoders, mixed how?\n\n"
        f"{notice}"
        f"Same budget for every model: {b['steps']} steps of batch {b['batch_size']}, "
        f"{b['n']} synthetic images per family. Scores are per family on held-out test records "
        "(exact match, edit similarity, relaxed accuracy or ANLS by family), 0-1.\n\n"
        f"{table}\n\nMachine: {results['machine']}; {results['seconds']:.0f} s in all.\n"
    )


def _print_examples(specs: list[RunSpec], per_run: int = 2) -> None:
    print("\nexample answers:")
    for spec in specs:
        path = spec.out / "eval" / "answers.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()[:per_run]]
        for row in rows:
            print(
                f"  [{spec.name}] {row.get('image', row['id'])}: {row['question'][:60]!r} -> "
                f"{row['prediction'][:40]!r} (ref {row['reference'][:40]!r})"
            )
