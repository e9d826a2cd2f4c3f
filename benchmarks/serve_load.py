"""The load side of benchmarks/bench_serve.py: a tiny random model, request bodies, closed-loop
HTTP clients and a `polyvis serve` in its own process."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

try:
    import aiohttp
except ImportError:  # the default load generator only (--client aiohttp); checked where used
    aiohttp = None
import httpx
import torch
from PIL import Image

from polyvis.serve.background import free_port

ROOT = Path(__file__).resolve().parents[1]
NO_AIOHTTP = "benchmarks/bench_serve.py --client aiohttp needs aiohttp: pip install -e '.[bench]'"
QUESTIONS = [
    "what is in the image?",
    "describe the picture.",
    "how many objects are there?",
    "which color is it?",
]


def build_tiny(out: Path) -> Path:
    from polyvis.config import load_config
    from polyvis.models.build import build_model, save_model

    torch.manual_seed(0)
    model, processor = build_model(load_config(ROOT / "configs" / "nano-tiny.yaml"))
    return save_model(model, processor, out)


def request_image(i: int, image_size: int) -> Image.Image:
    g = torch.Generator().manual_seed(i)
    return Image.fromarray(
        (torch.rand(image_size, image_size, 3, generator=g) * 255).byte().numpy()
    )


def request_body(i: int, max_tokens: int, image_size: int) -> dict:
    buf = io.BytesIO()
    request_image(i, image_size).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": QUESTIONS[i % 4]},
    ]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


async def load(
    url: str, bodies: list[dict], clients: int, client: str = "aiohttp"
) -> tuple[float, list[float], list[dict], float]:
    """`clients` closed-loop clients share the request list; returns (seconds, each request's
    latency, answers, the clients' CPU seconds), the lists in request order.

    The clients share this 2-core machine with the server, so their CPU is the server's loss:
    `aiohttp` (as vLLM's serving benchmark) with the bodies encoded beforehand is the default;
    `httpx`, what this benchmark used before, costs about four times its CPU (docs/serving.md)."""
    answers: list[dict] = [{}] * len(bodies)
    latencies: list[float] = [0.0] * len(bodies)
    raw = [json.dumps(body).encode() for body in bodies]
    headers = {"content-type": "application/json"}
    queue = list(range(len(bodies)))

    async def post_aiohttp(http: aiohttp.ClientSession, i: int) -> dict:
        async with http.post("/v1/chat/completions", data=raw[i], headers=headers) as r:
            r.raise_for_status()
            return await r.json()

    async def post_httpx(http: httpx.AsyncClient, i: int) -> dict:
        r = await http.post("/v1/chat/completions", json=bodies[i])
        r.raise_for_status()
        return r.json()

    async def closed_loop(http: Any, post: Callable[[Any, int], Awaitable[dict]]) -> None:
        while queue:
            i = queue.pop(0)
            t0 = time.perf_counter()
            answers[i] = await post(http, i)
            latencies[i] = time.perf_counter() - t0

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if client == "aiohttp":
        if aiohttp is None:
            sys.exit(NO_AIOHTTP)
        connector = aiohttp.TCPConnector(limit=clients + 4)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(closed_loop(http, post_aiohttp) for _ in range(clients)))
    elif client == "httpx":
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
            await asyncio.gather(*(closed_loop(http, post_httpx) for _ in range(clients)))
    else:
        raise ValueError(f"client must be aiohttp or httpx, not {client!r}")
    return time.perf_counter() - t0, latencies, answers, time.process_time() - cpu0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class ServerProcess:
    """`polyvis serve` in its own process (clients in this one must not share its GIL)."""

    def __init__(
        self, model_dir: Path, max_batch: int, args: argparse.Namespace, engine: str = "thread"
    ):
        self.port = free_port()
        cmd = [sys.executable, "-m", "polyvis", "serve", str(model_dir), "--port", str(self.port)]
        cmd += ["--max-batch", str(max_batch), "--batch-window-ms", str(args.window_ms)]
        cmd += ["--max-waiting-steps", str(args.max_waiting_steps)]
        cmd += ["--waiting-served-ratio", str(args.waiting_served_ratio)]
        cmd += ["--max-queue", str(4 * args.requests), "--log-level", "warning"]
        cmd += ["--engine", engine]
        if args.device:
            cmd += ["--device", args.device]
        if args.server_threads:
            cmd += ["--threads", str(args.server_threads)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "POLYVIS_API_KEY": ""})
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)
