"""PubTabNet -> table transcription (family "table", metric edit_similarity).

PubTabNet ships `PubTabNet_2.0.0.jsonl`, one table a line:
`{filename, split, imgid, html: {structure: {tokens: [...]}, cells: [{tokens: [...], bbox}]}}`,
with the images in `{split}/{filename}` (train, val). Structure tokens are HTML tags
("<thead>", "<tr>", "<td>", or "<td", ' colspan="2"', ">" for spanning cells, "</td>", ...); the
cells list holds each cell's content tokens (characters and tags like "<b>"), in `<td>` order.

Two targets (`target`):
- `markdown` (default): "Transcribe the table as markdown." -> a GitHub markdown table like the
  synthetic table family's: the first row is the header; a spanning cell's text sits in its
  top-left slot and the slots it covers are empty; formatting tags are dropped and "|" is escaped.
- `html`: "Transcribe the table as HTML." -> the full HTML `<table>...</table>` built as PubTabNet's
  own `format_html` does (cell content inserted after each "<td>" / ">", single characters
  HTML-escaped), i.e. the reference that TEDS scores.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    field,
    nonempty,
    require_file,
    utf8_text,
)
from polyvis.errors import DataError

QUESTIONS = {
    "markdown": "Transcribe the table as markdown.",  # as in the synthetic table family
    "html": "Transcribe the table as HTML.",
}
_SPAN = re.compile(r'(colspan|rowspan)\s*=\s*"?(\d+)"?')


def _cells(entry: dict[str, Any], where: str) -> tuple[list[str], list[list[str]]]:
    """(structure tokens, per-cell content tokens), checked to agree on the number of cells."""
    spec = field(entry, "html", where, dict)
    structure = spec.get("structure")
    tokens = structure.get("tokens") if isinstance(structure, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: 'html.structure.tokens' must be a list of strings")
    cells = field(spec, "cells", where, list)
    contents = []
    for k, cell in enumerate(cells):
        ct = cell.get("tokens") if isinstance(cell, dict) else None
        if not isinstance(ct, list) or not all(isinstance(t, str) for t in ct):
            raise DataError(f"{where}: html.cells[{k}].tokens must be a list of strings")
        contents.append(ct)
    n_open = sum(t in ("<td>", "<td") for t in tokens)
    if n_open != len(contents):
        raise DataError(f"{where}: {n_open} <td> in the structure but {len(contents)} cells")
    return tokens, contents


def table_html(tokens: list[str], contents: list[list[str]]) -> str:
    """PubTabNet's format_html without the <html><body> wrapper."""
    code = list(tokens)
    slots = [i for i, tag in enumerate(code) if tag in ("<td>", ">")]
    for i, cell in zip(reversed(slots), reversed(contents)):
        if cell:
            code.insert(i + 1, "".join(html.escape(t) if len(t) == 1 else t for t in cell))
    return "<table>" + "".join(code) + "</table>"


def _cell_text(cell: list[str]) -> str:
    text = "".join(t for t in cell if not (len(t) > 1 and t.startswith("<")))
    return " ".join(html.unescape(text).split()).replace("|", "\\|")


def table_grid(tokens: list[str], contents: list[list[str]]) -> list[list[str]]:
    """The table as rows of cell texts, spans expanded with empty slots."""
    rows: list[list[str | None]] = []
    pending: dict[tuple[int, int], bool] = {}  # slots covered by a rowspan from above
    cell_i, attrs, in_open = 0, "", False
    for tok in tokens:
        if tok == "<tr>":
            rows.append([])
        elif tok in ("<td>", "<td"):
            attrs, in_open = "", tok == "<td"
            if tok == "<td>":
                _place(rows, pending, _cell_text(contents[cell_i]), "")
                cell_i += 1
        elif in_open and tok == ">":
            _place(rows, pending, _cell_text(contents[cell_i]), attrs)
            cell_i, in_open = cell_i + 1, False
        elif in_open:
            attrs += tok
    width = max((len(r) for r in rows), default=0)
    return [[c or "" for c in r] + [""] * (width - len(r)) for r in rows]


def _place(rows: list[list], pending: dict, text: str, attrs: str) -> None:
    if not rows:
        rows.append([])
    r = len(rows) - 1
    row = rows[r]
    while pending.pop((r, len(row)), False):
        row.append(None)
    spans = {k: int(v) for k, v in _SPAN.findall(attrs)}
    colspan, rowspan = max(1, spans.get("colspan", 1)), max(1, spans.get("rowspan", 1))
    c0 = len(row)
    row.extend([text] + [None] * (colspan - 1))
    for dr in range(1, rowspan):
        for dc in range(colspan):
            pending[(r + dr, c0 + dc)] = True


def table_markdown(tokens: list[str], contents: list[list[str]]) -> str:
    """A GitHub markdown table (first row as header), as the synthetic table family writes."""
    grid = table_grid(tokens, contents)
    if not grid or not grid[0]:
        raise ValueError("table has no cells")
    lines = ["| " + " | ".join(grid[0]) + " |", "| " + " | ".join("---" for _ in grid[0]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(lines)


class PubTabNetParams(CommonParams):
    annotations: Path = Field(description="PubTabNet_2.0.0.jsonl")
    images: Path | None = Field(
        None, description="folder holding train/, val/ (default: the annotations' folder)"
    )
    target: Literal["html", "markdown"] = Field(
        "markdown",
        description="answer as a markdown table (spans flattened) or PubTabNet's full HTML",
    )
    prefix: str = Field("pubtabnet", description="record id prefix")


def jsonl_to_records(
    path: Path, images_root: Path, out_dir: Path, params: PubTabNetParams
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    images: ImageResolver | None = None  # made on the first entry of the split: a wrong
    # split should report the splits present, not a missing image folder
    render = table_markdown if params.target == "markdown" else table_html
    records, splits = [], set()
    with path.open("rb") as f:  # lines decoded one by one, so a bad byte names its line
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            line = utf8_text(raw, where)
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err})") from None
            split = field(entry, "split", where)
            splits.add(split)
            if split != params.split:
                continue
            name = field(entry, "filename", where)
            where = f"{path}:{n} ({name})"
            tokens, contents = _cells(entry, where)
            try:
                answer = render(tokens, contents)
            except ValueError as err:
                raise DataError(f"{where}: {err}") from None
            images = images or ImageResolver(
                images_root / params.split, out_dir, params.allow_missing
            )
            image = images.path(name, where)
            if image is None:
                continue
            key = entry.get("imgid", Path(name).stem)
            records.append(
                make_record(
                    f"{params.prefix}-{params.split}-{key}",
                    image,
                    [(QUESTIONS[params.target], answer)],
                    "table",
                    metric="edit_similarity",
                )
            )
    if images is None:
        found = ", ".join(sorted(splits)) or "none"
        raise DataError(f"{path}: no entries for split {params.split!r} (splits present: {found})")
    nonempty(records, path, images)
    return records


@register_converter("pubtabnet", family="table", params=PubTabNetParams)
def convert(params: PubTabNetParams, out_dir: Path) -> list[dict[str, Any]]:
    """PubTabNet JSONL -> table transcription as markdown or HTML"""
    path = require_file(params.annotations, "PubTabNet annotations")
    images_root = params.images if params.images is not None else path.parent
    return jsonl_to_records(path, images_root, out_dir, params)[: params.limit]
