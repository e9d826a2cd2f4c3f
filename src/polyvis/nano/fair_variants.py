"""Two options of the fair protocol's ablation file: the world's families and encoder variants.

    families: [ocrpage, tablepage]      # nano: the world's train, val and test families
    variants:                           # more encoders, each derived from one of the base's
      vary-tiled: {from: vary, tiling: {grids: [[1, 2], [2, 1], [2, 2]], thumbnail: true}}
    grid:
      encoders: [[vary], [vary-tiled]]

`families` (default the six of polyvis.nano.budget) generates those families at data seed 0
with the nano budget's images per family (cached like the six), trains every cell on their
scored questions, chooses on their val split and tests on a fresh test set of them. A variant
is its base encoder's entry (the same weights) with the fields it gives (tiling, layers,
image_size, ...) and its own name; it is usable in `grid.encoders` and `grid.controls`, and
only where named: the default encoder set stays the base's.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError

# a variant reads its base encoder's checkpoint: these come from `from`, never from the variant
FROM_BASE = ("name", "path", "config", "revision")


def world_families(spec: dict[str, Any]) -> list[str]:
    """The `families` option, checked (one line naming the field); the six by default."""
    from polyvis.data.synthetic import FAMILIES
    from polyvis.nano.budget import FAMILIES as SIX

    if "families" not in spec:
        return list(SIX)
    fams = spec["families"]
    if not spec.get("nano"):
        raise ConfigError("families", "nano ablations only (nano: true); a base config has data")
    if not isinstance(fams, list) or not fams or not all(isinstance(f, str) for f in fams):
        raise ConfigError("families", f"give a list of family names, got {fams!r}")
    for f in fams:
        if f not in FAMILIES:
            raise ConfigError(
                "families", f"unknown family {f!r}; valid: {', '.join(FAMILIES.names())}"
            )
    if len(set(fams)) != len(fams):
        raise ConfigError("families", f"a family is listed twice: {fams!r}")
    return list(fams)


def levels_of(difficulty: Any, families: list[str]) -> Any:
    """A per-family difficulty cut to `families` (medium when none is left); a level as is."""
    if not isinstance(difficulty, dict):
        return difficulty or "medium"
    return {f: v for f, v in difficulty.items() if f in families} or "medium"


def family_data(
    families: list[str], budget: dict[str, Any], jobs: int, progress: bool = False
) -> tuple[Path, list[Path], dict[str, Any]]:
    """(data folder, training selection, generator options) of a world of other families: the
    six's settings (data seed 0, 64 px, the budget's images and records per family and its
    difficulty where it names one of these families, else medium)."""
    from polyvis.data.synthetic.cache import ensure_synthetic
    from polyvis.nano.tasks import select_split

    options = {"families": list(families), "n": budget["n"], "seed": 0, "size": 64,
               "difficulty": levels_of(budget.get("difficulty"), families)}  # fmt: skip
    data_dir = ensure_synthetic(options, progress=progress, workers=jobs)
    # the selection's name as polyvis.nano.world.prepare_world gives it
    per_image = bool(budget.get("per_image"))
    key = json.dumps([budget["per_family"], 0, per_image])
    suffix = "nano-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    train = select_split(data_dir, list(families), "train", budget["per_family"], 0,
                         suffix=suffix, per_image=per_image)  # fmt: skip
    return data_dir, train, options


def add_variants(spec: dict[str, Any], encoders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base's encoder entries by name, and after them each variant's."""
    from pydantic import ValidationError

    from polyvis.config import EncoderSpec
    from polyvis.errors import config_error_from

    variants = spec.get("variants")
    if variants is None:
        return encoders
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants", "give {NAME: {from: ENCODER, FIELD: VALUE, ...}}")
    out = dict(encoders)
    for name, fields in variants.items():
        where = f"variants.{name}"
        if name in encoders:
            raise ConfigError(where, "is a base encoder's name; give the variant its own")
        if not isinstance(fields, dict) or "from" not in fields:
            raise ConfigError(where, "give `from: ENCODER` and the fields it changes (tiling, ...)")
        src = fields["from"]
        if src not in encoders:
            have = ", ".join(encoders)
            raise ConfigError(f"{where}.from", f"unknown encoder {src!r}; the base has {have}")
        own = [k for k in FROM_BASE if k in fields]
        if own:
            raise ConfigError(
                f"{where}.{own[0]}", f"comes from {src!r}: a variant keeps its weights"
            )
        entry = copy.deepcopy(encoders[src])
        entry.update(copy.deepcopy({k: v for k, v in fields.items() if k != "from"}), name=name)
        try:
            EncoderSpec(**entry)
        except ValidationError as err:
            raise config_error_from(err, where) from None
        out[name] = entry
    grid = spec.get("grid") or {}
    if "encoders" not in grid and "cells" not in grid:
        names = ", ".join(variants)
        raise ConfigError("grid.encoders", f"name the encoder sets: variants ({names}) are "
                          "in no set by default")  # fmt: skip
    return out


def max_image_tokens(processor: Any) -> int:
    """The most visual tokens one image takes: M, or with a tiled encoder whose count varies,
    M x its most views (thumbnail + rows x cols) over the grids (docs/tiling.md)."""
    m = int(processor.image_seq_length)
    if not processor.tokens_vary:
        return m
    tiling = processor.tiling
    return m * max(int(tiling["thumbnail"]) + r * c for r, c in tiling["grids"])
