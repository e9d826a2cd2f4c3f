"""im2latex-100k -> "Write the LaTeX for the formula." with the formula source as the answer.

The dataset's layout (Deng et al., 2017):
- `im2latex_formulas.lst`: one formula per line, the 0-based line number is its index. Lines are
  split on "\\n" only, as the original preprocessing does (a few formulas contain a bare "\\r"),
  and runs of whitespace become one space; the file is read as UTF-8, falling back to Latin-1.
- `im2latex_{train,validate,test}.lst`: lines `formula_idx image_name render_type`, the image being
  `formula_images/{image_name}.png`. The im2markup "filtered" lists (`image_name.png formula_idx`)
  are read too.

Family "latex" (metric: normalised edit similarity). Split "val" reads `im2latex_validate.lst`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from polyvis.data.converters import register_converter
from polyvis.data.converters._util import (
    CommonParams,
    ImageResolver,
    nonempty,
    require_file,
    utf8_text,
)
from polyvis.errors import DataError

# Same wording as the synthetic latex family, so real and synthetic data train the same task.
QUESTION = "Write the LaTeX for the formula."
SPLIT_FILES = {"val": "validate"}


def read_formulas(path: str | Path) -> list[str]:
    """The formulas, index = line number (0-based), whitespace normalised."""
    raw = require_file(path, "formulas file").read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # Whitespace runs (a stray "\r" included) become one space: LaTeX does not see the difference.
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no formula
        lines.pop()
    return [" ".join(line.split()) for line in lines]


def parse_list_line(line: str, where: str) -> tuple[int, str, str | None]:
    """One split-list line -> (formula index, image file name, render type or None)."""
    tokens = line.split()
    if len(tokens) >= 2 and tokens[0].isdigit():
        idx, name = int(tokens[0]), tokens[1]
        render = tokens[2] if len(tokens) > 2 else None
    elif len(tokens) == 2 and tokens[1].isdigit():  # im2markup filtered list: name.png idx
        idx, name, render = int(tokens[1]), tokens[0], None
    else:
        raise DataError(f"{where}: expected 'formula_idx image_name render_type', got {line!r}")
    if not Path(name).suffix:
        name += ".png"
    return idx, name, render


def list_to_records(
    list_path: Path, formulas: list[str], images: ImageResolver, split: str, prefix: str
) -> list[dict[str, Any]]:
    from polyvis.data.records import make_record

    records = []
    lines = utf8_text(list_path.read_bytes(), list_path).split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{list_path}:{n}"
        idx, name, render = parse_list_line(line, where)
        if idx >= len(formulas):
            raise DataError(
                f"{where}: formula index {idx} is past the formulas file ({len(formulas)} lines)"
            )
        if not formulas[idx]:
            raise DataError(f"{where}: formula {idx} is empty")
        path = images.path(name, where)
        if path is None:
            continue
        extra = {"formula_idx": idx} | ({"render_type": render} if render else {})
        rid = f"{prefix}-{split}-{Path(name).stem}"
        records.append(make_record(rid, path, [(QUESTION, formulas[idx])], "latex", **extra))
    return records


class Im2LatexParams(CommonParams):
    formulas: Path = Field(description="im2latex_formulas.lst")
    list: Path | None = Field(
        None, description="split list (default: im2latex_{split}.lst next to formulas)"
    )
    images: Path | None = Field(
        None, description="rendered formulas (default: formula_images/ next to formulas)"
    )
    prefix: str = Field("im2latex", description="record id prefix")


@register_converter("im2latex", family="latex", params=Im2LatexParams)
def convert(params: Im2LatexParams, out_dir: Path) -> list[dict[str, Any]]:
    """im2latex-100k formula lists + rendered images -> LaTeX transcription"""
    formulas = read_formulas(params.formulas)
    root = params.formulas.parent
    split = params.split
    list_name = f"im2latex_{SPLIT_FILES.get(split, split)}.lst"
    list_path = require_file(params.list or root / list_name, f"split list for {split!r}")
    images = ImageResolver(params.images or root / "formula_images", out_dir, params.allow_missing)
    records = list_to_records(list_path, formulas, images, split, params.prefix)
    return nonempty(records, list_path, images, params.limit)
