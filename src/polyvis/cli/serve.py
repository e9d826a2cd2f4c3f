"""`polyvis serve MODEL`: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from polyvis.cli._model_args import DTYPES
from polyvis.errors import PolyVisError

MiB = 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="POST /v1/chat/completions (images as data: URIs, stream: true for server-sent "
        "events), GET /v1/models, GET /health. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("model", help="polyvis model directory")
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
        "--model-name", default=None, help="model id in the API (default: the directory name)"
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
        help="most requests per batched generate (1: no batching)",
    )
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="how long to gather a batch")
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

    api_key = args.api_key or os.environ.get("POLYVIS_API_KEY") or None
    settings = ServeSettings(
        model_name=args.model_name,
        api_key=api_key,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        allow_local_files=args.allow_local_files,
        device=args.device,
        dtype=args.dtype,
    )
    if api_key is None and not _is_loopback(args.host):
        print(f"polyvis: warning: serving on {args.host} without an API key", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(args.model, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
