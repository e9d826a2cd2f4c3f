"""`polyvis train`, `polyvis merge-lora`."""

from __future__ import annotations

import argparse

from polyvis.cli._model_args import add_set_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (resumes RUN from its last checkpoint)")
    p.add_argument("config", help="YAML config, e.g. configs/nano-tiny.yaml")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    add_set_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("merge-lora", help="merge a LoRA run's adapter into the LM weights")
    p.add_argument("model", help="model directory with a lora/ adapter (RUN/final)")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=cmd_merge_lora)


def cmd_train(args: argparse.Namespace) -> int:
    from polyvis.config import load_config
    from polyvis.train import train

    cfg = load_config(args.config, args.set)
    final = train(cfg, args.out, progress=not args.no_progress)
    print(f"final model: {final}")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from pathlib import Path

    from polyvis.errors import PolyVisError
    from polyvis.models.build import load_model, save_model

    if not (Path(args.model) / "lora").is_dir():
        raise PolyVisError(f"{args.model}: no lora/ adapter to merge")
    model, processor = load_model(args.model)
    model.language_model = model.language_model.merge_and_unload()
    save_model(model, processor, args.out)
    print(f"merged model: {args.out}")
    return 0
