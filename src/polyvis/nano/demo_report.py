"""What `polyvis demo` says: its plan first, then each cell's family scores with the 95 % CI over
test items of its one seed, a few answers, and where the answer with CIs over seeds lives. Its
files are the fair protocol's (polyvis.nano.protocol): OUT/leaderboard.{json,md,png} and
OUT/results.html, which open with the same notes (demo_notes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polyvis.nano.fair_cells import cell_name, slug, typed
from polyvis.nano.fair_world import ALIGN_SHARE, TEST_DATA_SEED, TEST_IMAGES, align_steps

LEADERBOARD = "docs/leaderboard.md"


def start_banner(spec: dict[str, Any], budget: dict[str, Any]) -> str:
    """The demo's plan in a few lines: its cells, the one seed, the budget, the test set."""
    grid = spec["grid"]
    names = [
        cell_name(c["encoders"], typed(c["fusion"], "fusion") if c.get("fusion") else None)
        + "".join(f" ({k} {v:g})" for k, v in (c.get("train") or {}).items())
        for c in grid["cells"]
    ]  # fmt: skip
    adapter = ",".join(f"{k}={v}" for k, v in grid["adapter"][0].items() if k != "type")
    steps = budget["steps"]
    align = align_steps(steps, ALIGN_SHARE)
    test = spec.get("test_images", 8 if spec.get("quick") else TEST_IMAGES)  # as fair_world
    precision = budget.get("precision", "fp32")
    said = f"\n  {precision_notice(precision)}" if precision != "fp32" else ""
    return (
        "polyvis demo: the leaderboard's fair protocol (polyvis ablate) at one seed "
        f"({grid['seeds'][0]}).\n"
        f"  cells: {'; '.join(names)}\n"
        f"  every cell: a fresh fusion and {grid['adapter'][0]['type']}({adapter}) adapter on "
        f"lm-nano, {align} align steps (LM frozen) then {steps - align} of fine-tuning, batch "
        f"{budget['batch_size']}\n"
        f"  scored on a test set generated from data seed {TEST_DATA_SEED} ({test} images per "
        f"family) once every run is trained and scored on val{said}"
    )


def quick_notice(budget: dict[str, Any]) -> str:
    """What `--quick` results say first: a smoke test, scores that mean nothing."""
    return (
        "SMOKE TEST (--quick): these numbers mean nothing. It only checks that every step runs "
        f"(data, experts, training, evaluation, report); {budget['steps']} training steps on "
        f"{budget['n']} images per family cannot learn the tasks. Run `polyvis demo` without "
        "--quick to compare the models."
    )


def one_seed_note(seed: int) -> str:
    """Every demo's last word: one seed, so its intervals leave out the seed's own noise."""
    return (
        f"One seed ({seed}): each bracket is a 95 % CI over test items only, not over training "
        f"seeds. {LEADERBOARD} holds the answer, with confidence intervals over seeds and items "
        "(`polyvis ablate configs/leaderboard-nano.yaml`)."
    )


def precision_notice(precision: str) -> str:
    """What a demo in another precision than the leaderboard's says first."""
    return (
        f"{precision} world (--precision {precision}): the experts and every run trained in "
        f"{precision}, so these are other models than the leaderboard's (fp32) and its scores "
        "are not theirs."
    )


def demo_notes(quick: bool, budget: dict[str, Any], seed: int) -> list[str]:
    """The notes leaderboard.md and results.html open with."""
    precision = budget.get("precision", "fp32")
    return (
        ([quick_notice(budget)] if quick else [])
        + ([precision_notice(precision)] if precision != "fp32" else [])
        + [one_seed_note(seed)]
    )


def demo_table(doc: dict[str, Any]) -> str:
    """Per cell (in the demo's order) its family means and mean, each with its 95 % CI; then the
    floor, one constant answer per question type chosen on val (polyvis.eval.floor)."""
    fams = list(doc["families"])

    def ci(entry: dict[str, Any]) -> str:
        lo, hi = entry["ci"]
        return f"{entry['mean']:.1f} [{lo:.1f}, {hi:.1f}]"

    lines = ["| cell | " + " | ".join([*fams, "mean"]) + " |", "|---|" + "---:|" * (len(fams) + 1)]
    floor = doc.get("floor")
    for c in [*doc["cells"], *([{**floor, "name": f"(floor: {floor['name']})"}] if floor else [])]:
        row = [c["name"], *(ci(c["families"][f]) for f in fams), ci(c["mean"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def answers_path(out: Path, cell: dict[str, Any], seed: int) -> Path:
    """A demo cell's test answers: its run at the setting it was given, at the one seed."""
    from polyvis.nano.fair_plan import Setting

    setting = Setting(cell["selection"]["chosen"])
    return (
        out
        / "cells"
        / slug(cell["name"])
        / setting.slug
        / f"seed-{seed}"
        / "test"
        / "answers.jsonl"
    )


def print_summary(
    doc: dict[str, Any], out: Path, quick: bool, budget: dict[str, Any], seed: int, seconds: float
) -> None:
    """The table (after the smoke-test notice, where the zeros are), an answer per cell, the
    files, and the one-seed note last."""
    if quick:
        print("\n" + quick_notice(budget))
    print("\nmean and family scores (points), 95 % CI over test items:\n\n" + demo_table(doc))
    print("\nexample answers (test set):")
    for cell in doc["cells"]:
        path = answers_path(out, cell, seed)
        line = path.read_text(encoding="utf-8").splitlines()[0] if path.is_file() else ""
        if line:
            row = json.loads(line)
            print(
                f"  [{cell['name']}] {row['question'][:50]!r} -> {row['prediction'][:40]!r} "
                f"(ref {row['reference'][:40]!r})"
            )
    print(
        f"\nfiles: {out / 'leaderboard.md'}, {out / 'leaderboard.png'}, {out / 'results.html'}; "
        f"{seconds:.0f} s in all"
    )
    print("\n" + one_seed_note(seed))
