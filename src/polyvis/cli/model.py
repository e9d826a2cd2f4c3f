"""`polyvis list`, `polyvis init-model`."""

from __future__ import annotations

import argparse
from typing import Any

from polyvis.cli._model_args import add_set_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every registry entry, one 'kind: name' a line")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("init-model", help="build the untrained model of a config and save it")
    p.add_argument("config", help="YAML config (e.g. configs/nano-tiny.yaml)")
    p.add_argument("--out", required=True, help="output model directory")
    add_set_argument(p)
    p.set_defaults(func=cmd_init_model)


def cmd_list(args: argparse.Namespace) -> int:
    from polyvis.registry import load_all_registries

    for kind, reg in sorted(load_all_registries().items()):
        for name in reg.names():
            print(f"{kind}: {name}")
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from polyvis.config import dump_config, load_config
    from polyvis.models.build import build_model, save_model
    from polyvis.paths import atomic_dir, check_replaceable

    cfg = load_config(args.config, args.set)
    out = check_replaceable(Path(args.out), "config.json", "model")  # before building
    model, processor = build_model(cfg)
    # saved aside, then put in place whole: an earlier model's files (another encoder's image
    # processor) do not stay beside the new one's
    with atomic_dir(out, replace=True) as tmp:
        save_model(model, processor, tmp)
        dump_config(cfg, tmp / "polyvis.yaml")
    n = sum(p.numel() for p in model.parameters())
    print(f"saved untrained model ({n / 1e6:.2f}M parameters, {visual_tokens(processor)}) to {out}")
    return 0


def visual_tokens(processor: Any) -> str:
    """The visual tokens per image: "M visual tokens", or for a tiled encoder whose count varies
    the formula of docs/tiling.md and its range over the grids."""
    m = processor.image_seq_length
    if not processor.tokens_vary:
        return f"{m} visual tokens"
    tiling = processor.tiling
    t = int(tiling["thumbnail"])
    counts = sorted({m * (t + r * c) for r, c in tiling["grids"]})
    views = "(1 + rows x cols)" if t else "rows x cols"
    grids = " ".join(f"{r}x{c}" for r, c in tiling["grids"])
    return (
        f"{m} x {views} visual tokens per image, {counts[0]} to {counts[-1]}: "
        f"encoder {tiling['encoder']!r} tiled on grids {grids}"
    )
