"""Throughput and latency of `polyvis serve`, dynamic batching against one request at a time.

Starts `polyvis serve` twice on 127.0.0.1, each in its own process: batched (--max-batch, a
5 ms window) and unbatched (--max-batch 1). For 1, 8 and 32 concurrent clients, each client sends
chat requests (one image as a data URI + a question, greedy, --max-tokens new tokens) back to
back; the table gives requests/s, generated tokens/s and latency percentiles, and checks that
both servers gave the same answers.

Without --model it builds configs/nano-tiny.yaml with random weights (seed 0): no download, and
every answer runs to max_tokens, so both modes generate the same amount of text.

    .venv/bin/python benchmarks/bench_serve.py
    .venv/bin/python benchmarks/bench_serve.py --model runs/my-model --device cuda --requests 128
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
from PIL import Image

from polyvis.serve.background import free_port

ROOT = Path(__file__).resolve().parents[1]
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


def request_body(i: int, max_tokens: int, image_size: int) -> dict:
    g = torch.Generator().manual_seed(i)
    pixels = (torch.rand(image_size, image_size, 3, generator=g) * 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": QUESTIONS[i % 4]},
    ]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


async def load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float], list[dict]]:
    """`clients` closed-loop clients share the request list; returns (seconds, latencies, answers)."""
    answers: list[dict] = [{}] * len(bodies)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, queue: list[int]) -> None:
        while queue:
            i = queue.pop(0)
            t0 = time.perf_counter()
            r = await http.post("/v1/chat/completions", json=bodies[i])
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            answers[i] = r.json()

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        queue = list(range(len(bodies)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, queue) for _ in range(clients)))
        return time.perf_counter() - t0, latencies, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class ServerProcess:
    """`polyvis serve` in its own process (clients in this one must not share its GIL)."""

    def __init__(self, model_dir: Path, max_batch: int, args: argparse.Namespace):
        self.port = free_port()
        cmd = [sys.executable, "-m", "polyvis", "serve", str(model_dir), "--port", str(self.port)]
        cmd += ["--max-batch", str(max_batch), "--batch-window-ms", str(args.window_ms)]
        cmd += ["--max-queue", str(4 * args.requests), "--log-level", "warning"]
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="polyvis model directory (default: a random nano-tiny)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per (mode, clients) run")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="passed to polyvis serve (e.g. cuda)")
    parser.add_argument(
        "--server-threads", type=int, default=None, help="torch CPU threads of the server"
    )
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]  # other work on the machine skews every number below
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_tiny(Path(tmp.name) / "nano-tiny")
    bodies = [request_body(i, args.max_tokens, args.image_size) for i in range(args.requests)]
    rows, answers_by_mode = [], {}
    modes = {"batched": args.max_batch, "unbatched": 1}
    # Both servers run side by side (the idle one costs nothing) and the modes alternate for each
    # client count, so a change in the machine's other load does not favour one mode.
    with contextlib.ExitStack() as stack:
        urls = {
            mode: stack.enter_context(ServerProcess(model_dir, mb, args))
            for mode, mb in modes.items()
        }
        warm = max(args.clients)
        for url in urls.values():  # warm-up: connections, kernels, batch shapes
            asyncio.run(load(url, bodies[:warm], warm))
        for clients in args.clients:
            for mode, url in urls.items():
                before = httpx.get(f"{url}/health").json()
                seconds, lat, answers = asyncio.run(load(url, bodies, clients))
                after = httpx.get(f"{url}/health").json()
                tokens = sum(a["usage"]["completion_tokens"] for a in answers)
                mean_batch = (after["requests"] - before["requests"]) / max(
                    1, after["batches"] - before["batches"]
                )
                rows.append(
                    (mode, clients, len(bodies) / seconds, tokens / seconds, lat, mean_batch)
                )
                answers_by_mode.setdefault(mode, []).append(
                    [a["choices"][0]["message"]["content"] for a in answers]
                )
                print(
                    f"  {mode:9s} {clients:3d} clients: {len(bodies) / seconds:7.2f} req/s",
                    file=sys.stderr,
                )
    rows.sort(key=lambda r: (r[0], r[1]))

    cpu = f"{os.cpu_count()} CPUs ({platform.machine()})"
    print(
        f"model: {model_dir.name if args.model else 'nano-tiny (random)'}, device: {args.device or 'default'}, "
        f"{cpu}, server threads: {args.server_threads or 'default'}, load average at start: "
        f"{load_at_start:.1f}, max_tokens: {args.max_tokens}, {args.requests} requests per run, one "
        f"{args.image_size}x{args.image_size} image per request, window {args.window_ms} ms\n"
    )
    print("| mode | clients | req/s | tokens/s | p50 ms | p90 ms | p99 ms | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, clients, rps, tps, lat, mean_batch in rows:
        p = [percentile(lat, q) * 1000 for q in (50, 90, 99)]
        print(
            f"| {mode} | {clients} | {rps:.2f} | {tps:.0f} | {p[0]:.0f} | {p[1]:.0f} | {p[2]:.0f} | {mean_batch:.1f} |"
        )
    n = len(args.clients)
    speedups = {c: rows[i][2] / rows[i + n][2] for i, c in enumerate(args.clients)}
    print(
        "\nbatched / unbatched req/s: "
        + ", ".join(f"{c} clients x{s:.2f}" for c, s in speedups.items())
    )
    runs = [a for per_mode in answers_by_mode.values() for a in per_mode]
    same = all(r == runs[0] for r in runs)
    print(
        f"same answers in every run (batched and unbatched, all client counts): {'yes' if same else 'NO'}"
    )
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
