"""`polyvis train`, `polyvis merge-lora`."""

from __future__ import annotations

import argparse
import os

from polyvis.cli._model_args import add_set_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (resumes RUN from its last checkpoint)")
    p.add_argument("config", help="YAML config, e.g. configs/nano-tiny.yaml")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    add_set_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("merge-lora", help="merge a LoRA run's adapter into the LM weights")
    p.add_argument("model", help="model directory with a lora/ adapter (RUN/final), or RUN")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=cmd_merge_lora)


def cmd_train(args: argparse.Namespace) -> int:
    from polyvis.config import load_config
    from polyvis.train import train

    cfg = load_config(args.config, args.set)
    final = train(cfg, args.out, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process of a launch
        print(f"final model: {final}")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from polyvis.cli._model_args import resolve_model_dir
    from polyvis.errors import PolyVisError
    from polyvis.models.build import load_model, save_model

    model_dir = resolve_model_dir(args.model)  # a run directory: its final/ model
    if not (Path(model_dir) / "lora").is_dir():
        raise PolyVisError(f"{model_dir}: no lora/ adapter to merge")
    model, processor = load_model(model_dir)
    model.language_model = model.language_model.merge_and_unload()
    out = save_model(model, processor, args.out)
    recorded = Path(model_dir) / "polyvis.yaml"  # the model section train.init_from reads
    if recorded.is_file():
        shutil.copyfile(recorded, Path(out) / "polyvis.yaml")
    print(f"merged model: {args.out}")
    return 0
