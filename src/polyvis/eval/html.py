"""Self-contained HTML reports (results.html): the table, the plot, a sample of items per family
with every run's answer, right or wrong, and filters by family and by "runs disagree".

One file, nothing to fetch: the plot and the thumbnails are base64 `data:` URIs, the style and
the filter script are inline, and the page's Content-Security-Policy forbids loading anything
else, so it opens the same from a laptop, a CI artifact or an e-mail.

    write_eval_html(results, "runs/eval")              # polyvis eval
    write_compare_html(["runs/a", "runs/b"], "cmp")    # polyvis compare
    write_html_report(path, title, table, plot=..., answers={run: answers.jsonl})  # anything
    write_ablation_html(path, summary=... or leaderboard=..., plot=..., answers=...)  # ablations
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from polyvis.eval.html_assets import CSP, CSS, SCRIPT
from polyvis.eval.html_items import RIGHT, Item, report_items
from polyvis.eval.html_tables import Table, eval_table, interval_svg
from polyvis.eval.report import (
    RESULTS_FILE,
    compare_cells,
    item_mismatch_note,
    load_results,
    order_families,
    run_names,
)
from polyvis.paths import write_text_atomic

__all__ = [
    "HTML_FILE",
    "ReportPage",
    "Table",
    "render_html",
    "write_ablation_html",
    "write_compare_html",
    "write_eval_html",
    "write_html_report",
]

HTML_FILE = "results.html"

# Characters a browser drops (NUL), draws as an empty box or obeys unseen (bidi controls that
# reorder the text around them), and lone surrogates, which UTF-8 cannot even write: a model's
# prediction may hold any of them, and the report must show what it said.
HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _notation(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: str) -> str:
    """`text` escaped for an attribute or <title>: each HIDDEN character as its Python escape
    (\\x1b, \\u202e)."""
    return escape(HIDDEN.sub(lambda m: _notation(m.group()), text))


def shown(text: str) -> str:
    """`text` escaped as element content: each HIDDEN character as its Python escape, marked
    (class "ctl", its code point as a tooltip) so it does not read as the literal text."""
    out, pos = [], 0
    for m in HIDDEN.finditer(text):
        ch = m.group()
        out.append(escape(text[pos : m.start()]))
        out.append(f'<span class="ctl" title="U+{ord(ch):04X}">{_notation(ch)}</span>')
        pos = m.end()
    return "".join(out) + escape(text[pos:])


@dataclass
class ReportPage:
    """What one report shows; `render_html` makes the page, `write_html_report` builds and
    writes one from files."""

    title: str
    table: Table
    plot: bytes | None = None
    items: list[Item] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_family: int = 8


def _table_html(table: Table) -> str:
    def cell(tag: str, text: str, i: int) -> str:
        cls = ' class="num"' if i >= table.left else ""
        return f"<{tag}{cls}>{shown(text)}</{tag}>"

    head = "".join(cell("th", c, i) for i, c in enumerate(table.columns))
    if table.intervals is not None:
        head += f"<th>{shown(table.interval_label)}</th>"
    body = []
    for r, row in enumerate(table.rows):
        tds = "".join(cell("td", c, i) for i, c in enumerate(row))
        if table.intervals is not None:
            tds += f"<td>{interval_svg(table.intervals, r)}</td>"
        body.append(f"<tr>{tds}</tr>")
    return (
        f'<table id="scores"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _answer_cell(item: Item, run: str) -> str:
    answer = item.answers.get(run)
    if answer is None:
        return '<td class="missing">-</td>'
    mark, cls = ("\u2713", "right") if answer.right else ("\u2717", "wrong")
    boxes = (
        f'<img class="boxes" alt="boxes of the answer" src="{answer.boxes}">'
        if answer.boxes
        else ""
    )
    return (
        f'<td class="{cls}">{shown(answer.prediction)}'
        f'<span class="mark">{mark} {answer.score:.2f}</span>{boxes}</td>'
    )


def _items_html(page: ReportPage) -> str:
    if not page.items:
        return ""
    groups = order_families([it.group for it in page.items])
    options = "".join(f'<option value="{plain(g)}">{plain(g)}</option>' for g in groups)
    disagree = (
        '<label><input type="checkbox" id="disagree"> only where the runs disagree</label>'
        if len(page.runs) > 1
        else ""
    )
    head = "<th>image</th><th>family</th><th>question</th><th>reference</th>"
    head += "".join(f"<th>{shown(r)}</th>" for r in page.runs)
    rows = []
    for it in page.items:
        thumb = f'<img class="thumb" alt="" src="{it.thumbnail}">' if it.thumbnail else ""
        rows.append(
            f'<tr data-family="{plain(it.group)}" data-disagree="{int(it.disagree)}">'
            f"<td>{thumb}</td><td>{shown(it.group)}<small>{shown(it.id)}</small></td>"
            f"<td>{shown(it.question)}</td><td>{shown(it.reference)}</td>"
            + "".join(_answer_cell(it, r) for r in page.runs)
            + "</tr>"
        )
    first = (
        "those on which the runs disagree (one right, another wrong) first, then the others"
        if len(page.runs) > 1
        else "in the order they were asked"
    )
    return (
        '<section id="items"><h2>Answers</h2>'
        f'<p class="how">Per family, up to {page.per_family} items: {first}. '
        f"\u2713 right (score \u2265 {RIGHT}), \u2717 wrong; the number is the item's score.</p>"
        f'<div id="filters"><label>Family <select id="family"><option value="">all</option>'
        f'{options}</select></label>{disagree}<span id="shown"></span></div>'
        f'<table id="answers"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></section>"
    )


def render_html(page: ReportPage) -> str:
    notes = "".join(f'<p class="note">{shown(n)}</p>' for n in page.notes)
    plot = ""
    if page.plot is not None:
        data = base64.b64encode(page.plot).decode()
        plot = f'<img id="plot" alt="bar chart of the scores" src="data:image/png;base64,{data}">'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{plain(page.title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{shown(page.title)}</h1>{notes}"
        f'<section id="summary"><h2>Scores</h2><div class="side">{_table_html(page.table)}{plot}'
        "</div></section>"
        f"{_items_html(page)}<script>{SCRIPT}</script></body></html>\n"
    )


def write_html_report(
    path: str | Path,
    title: str,
    table: Table,
    plot: str | Path | None = None,
    answers: Mapping[str, str | Path] | None = None,
    records: Iterable[str | Path] = (),
    notes: Sequence[str] = (),
    per_family: int = 8,
) -> Path:
    """Write one self-contained HTML report and return its path.

    plot: a PNG file to embed (left out when missing); answers: run name -> answers.jsonl, whose
    items are shown per family (up to `per_family`), with thumbnails from `records` and from each
    run's results.json beside its answers. A run whose answers file is missing is left out, so a
    report at the end of a long run never fails for want of one.
    """
    answers = {run: Path(p) for run, p in (answers or {}).items() if Path(p).is_file()}
    plot_path = Path(plot) if plot is not None else None
    page = ReportPage(
        title=title,
        table=table,
        plot=plot_path.read_bytes() if plot_path is not None and plot_path.is_file() else None,
        items=report_items(answers, records, per_family) if answers else [],
        runs=list(answers),
        notes=list(notes),
        per_family=per_family,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_html(page))
    return path


# ---- the reports of polyvis eval and polyvis compare ------------------------------------------


def write_eval_html(results: dict[str, Any], out_dir: str | Path, per_family: int = 8) -> Path:
    """OUT/results.html for one `polyvis eval` run (its results.png and answers.jsonl)."""
    out = Path(out_dir)
    name = str(results.get("name") or results["model"])
    return write_html_report(
        out / HTML_FILE,
        f"Results: {name}",
        eval_table(results),
        plot=out / "results.png",
        answers={name: out / "answers.jsonl"},
        records=[Path(f) for f in (results.get("settings") or {}).get("data", [])],
        per_family=per_family,
    )


def write_compare_html(
    result_dirs: Sequence[str | Path], out: str | Path, per_family: int = 8
) -> Path:
    """OUT/results.html for `polyvis compare`: the table, OUT/compare.png, and the runs' answers
    side by side (each DIR/answers.jsonl that exists)."""
    dirs = [Path(d) for d in result_dirs]
    runs = [load_results(d / RESULTS_FILE) for d in dirs]
    names = run_names(dirs, runs)
    columns, cells = compare_cells(runs)
    rows = [[n, *line] for n, line in zip(names, cells)]
    answers = {
        n: d / "answers.jsonl" for n, d in zip(names, dirs) if (d / "answers.jsonl").is_file()
    }
    mismatch = item_mismatch_note(names, runs, dirs)
    return write_html_report(
        Path(out) / HTML_FILE,
        "Comparison",
        Table(["run", *columns], rows),
        plot=Path(out) / "compare.png",
        answers=answers,
        notes=[mismatch] if mismatch else [],
        per_family=per_family,
    )


def write_ablation_html(
    path: str | Path,
    summary: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    leaderboard: Mapping[str, Any] | None = None,
    plot: str | Path | None = None,
    answers: Mapping[str, str | Path] | None = None,
    records: Iterable[str | Path] = (),
    notes: Sequence[str] = (),
    per_family: int = 8,
) -> Path:
    """An ablation's results.html, with each cell's 95 % confidence interval.

    summary: cell -> column -> {mean, std, n} (points, over seeds; the interval is Student's t
    over the seeds); leaderboard: the leaderboard document (its cells' bootstrap intervals).
    Give one. answers: a run per cell (e.g. its first seed) -> answers.jsonl.
    """
    from polyvis.eval.html_tables import leaderboard_table, summary_table

    if (summary is None) == (leaderboard is None):
        raise ValueError("give the ablation's summary or its leaderboard document, not both")
    table = summary_table(summary) if summary is not None else leaderboard_table(leaderboard)
    return write_html_report(
        path, "Ablation", table, plot, answers, records, notes, per_family
    )  # fmt: skip
