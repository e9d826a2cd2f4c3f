"""`polyvis list`, `polyvis init-model`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every registry entry, one 'kind: name' a line")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("init-model", help="build the untrained model of a config and save it")
    p.add_argument("config", help="YAML config (e.g. configs/nano-tiny.yaml)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides")
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

    cfg = load_config(args.config, args.set)
    model, processor = build_model(cfg)
    out = save_model(model, processor, args.out)
    dump_config(cfg, Path(out) / "polyvis.yaml")
    n = sum(p.numel() for p in model.parameters())
    print(
        f"saved untrained model ({n / 1e6:.2f}M parameters, {model.image_seq_length} visual tokens) to {out}"
    )
    return 0
