"""`polyvis serve MODEL [MODEL...]`: the OpenAI-compatible HTTP server (FastAPI + uvicorn) and
its chat page; several models are served side by side, each under its own id."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from polyvis.cli._model_args import DTYPES, resolve_model_dir
from polyvis.data.boxes import BOX_FORMATS
from polyvis.errors import ConfigError, PolyVisError

MiB = 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API, with a chat page",
        description="POST /v1/chat/completions (images as data: URIs, stream: true for server-sent "
        "events), GET /v1/models, GET /health, and a chat page at / (with a compare view when "
        "several models are served). Binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="polyvis model directories or run directories (their final/), or ID=DIR to choose "
        "a model's id (default: the directory's name, or as much of its path as tells it apart "
        "from the others)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $POLYVIS_API_KEY)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="model id in the API, with one model (default: the directory name)",
    )
    p.add_argument(
        "--device", default=None, help="e.g. cuda, cpu (default: where load_model puts it)"
    )
    p.add_argument("--dtype", choices=DTYPES, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (on a busy CPU, 1 is often much faster than the default)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="most requests decoding together; newcomers join at the next step (1: no batching)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long an idle batcher waits for more requests",
    )
    p.add_argument(
        "--max-waiting-steps",
        type=int,
        default=8,
        help="decoding steps newcomers may wait to join a running batch as one group (0: at once)",
    )
    p.add_argument(
        "--waiting-served-ratio",
        type=float,
        default=1.2,
        help="newcomers join at once when at least this many times the running rows wait",
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="waiting requests beyond this get 503"
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=512, help="largest (and default) max_tokens"
    )
    p.add_argument("--max-images", type=int, default=8, help="images per request")
    p.add_argument("--max-image-mb", type=float, default=10.0, help="bytes of one image, in MiB")
    p.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="width x height of one image"
    )
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body size, in MiB")
    p.add_argument(
        "--allow-local-files",
        metavar="DIR",
        default=None,
        help="let requests name image files inside DIR (paths or file:// URIs); refused otherwise",
    )
    p.add_argument(
        "--engine",
        choices=["thread", "process"],
        default="process",
        help="run the models in a process of their own, so the HTTP front end does not share "
        "Python's interpreter lock with them (process, the default), or in this one (thread)",
    )
    p.add_argument("--no-web", action="store_true", help="no chat page at / (the API only)")
    p.add_argument(
        "--box-format",
        choices=BOX_FORMATS,
        default="pixels",
        help="how the chat page reads the boxes [x1, y1, x2, y2] in answers: image pixels, or "
        "0-1000 of its width/height (for models trained on norm1000 data; default: pixels)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise PolyVisError(
            f"polyvis serve needs the serve extra ({err.name} is missing): pip install 'polyvis[serve]'"
        ) from None

    from polyvis.serve.app import create_app
    from polyvis.serve.settings import ServeSettings

    models = model_sources(args.models)
    if args.model_name is not None:
        if len(models) > 1:
            raise ConfigError("--model-name", "names one model; with several, give ID=DIR")
        models = {args.model_name: next(iter(models.values()))}
    api_key = args.api_key or os.environ.get("POLYVIS_API_KEY") or None
    settings = ServeSettings(
        api_key=api_key,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_waiting_steps=args.max_waiting_steps,
        waiting_served_ratio=args.waiting_served_ratio,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        allow_local_files=args.allow_local_files,
        device=args.device,
        dtype=args.dtype,
        web=not args.no_web,
        engine=args.engine,
        box_format=args.box_format,
    )
    if api_key is None and not _is_loopback(args.host):
        print(f"polyvis: warning: serving on {args.host} without an API key", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(models, settings)
    where = f"http://{args.host}:{args.port}/"
    print(f"polyvis: serving {', '.join(models)}" + ("" if args.no_web else f"; chat at {where}"))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def model_sources(given: list[str]) -> dict[str, Path]:
    """MODEL arguments -> {id: model directory}: ID=DIR names a model; others get model_ids'
    names (a run directory's name, not its final/'s)."""
    from polyvis.serve.served import model_ids

    pairs: list[tuple[str | None, Path]] = []
    for arg in given:
        name, sep, rest = arg.partition("=")
        if sep and name and not Path(arg).is_dir():
            pairs.append((name, Path(rest)))
        else:
            pairs.append((None, Path(arg)))
    for _, path in pairs:
        if not path.is_dir():
            raise ConfigError("model", f"{path} is not a model directory")
    defaults = iter(model_ids([p for name, p in pairs if name is None]))
    models: dict[str, Path] = {}
    for name, path in pairs:
        key = name or next(defaults)
        if key in models:
            raise ConfigError("model", f"two models would have the id {key!r}; give ID=DIR")
        models[key] = resolve_model_dir(path)  # a run directory serves its final/ model
    return models


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
