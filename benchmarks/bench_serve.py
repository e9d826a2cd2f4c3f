"""Throughput and latency of `polyvis serve`'s continuous batching.

Two scenarios; every request is a chat request with one image (a data URI) and a question,
greedy, and closed-loop clients (each sends its next request when its answer arrives).
--engine picks `polyvis serve --engine`: the models in the server's process, or in their own.
The HTTP clients are aiohttp (`pip install -e '.[bench]'`; --client httpx for the old ones).

--scenario uniform (default): `polyvis serve` twice on 127.0.0.1, each in its own process,
batched (--max-batch) and unbatched (--max-batch 1); for 1, 8 and 32 clients, requests of
--max-tokens tokens each. The table gives requests/s, tokens/s and latency percentiles, and
checks that both servers gave the same answers.

--scenario mixed: half the requests ask 1-8 tokens, half 24-64 (a seeded draw, --seed), in a
seeded order. The same requests are sent one at a time (one client) and by --clients clients
(default 32), --repeat times each, alternating: through one batched `polyvis serve` (HTTP; by
default once with each engine), and straight to a Batcher in this process (no HTTP, images
preprocessed beforehand). The table gives
requests/s (and its ratio) and the mean latency of the short and the long requests (and its
ratio), and checks that every run gave the same answers.

Without --model it builds configs/nano-tiny.yaml with random weights (seed 0): no download, and
every answer runs to its max_tokens, so every run generates the same amount of text.

    .venv/bin/python benchmarks/bench_serve.py
    .venv/bin/python benchmarks/bench_serve.py --scenario mixed --server-threads 1
    .venv/bin/python benchmarks/bench_serve.py --model runs/my-model --device cuda --requests 128
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
from serve_load import (  # benchmarks/serve_load.py, beside this script
    NO_AIOHTTP,
    QUESTIONS,
    ServerProcess,
    aiohttp,
    build_tiny,
    load,
    percentile,
    request_body,
    request_image,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["uniform", "mixed"], default="uniform")
    parser.add_argument("--model", help="polyvis model directory (default: a random nano-tiny)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=None, help="uniform: 1 8 32; mixed: 32"
    )
    parser.add_argument("--requests", type=int, default=96, help="requests per (mode, clients) run")
    parser.add_argument("--max-tokens", type=int, default=16, help="uniform: tokens per answer")
    parser.add_argument("--seed", type=int, default=0, help="mixed: the draw of max_tokens")
    parser.add_argument(
        "--repeat", type=int, default=2, help="mixed: runs of each mode, alternating"
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    parser.add_argument(
        "--max-waiting-steps",
        type=int,
        default=8,
        help="steps newcomers may wait (0: join at once)",
    )
    parser.add_argument("--waiting-served-ratio", type=float, default=1.2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="passed to polyvis serve (e.g. cuda)")
    parser.add_argument(
        "--server-threads", type=int, default=None, help="torch CPU threads of the server"
    )
    parser.add_argument(
        "--engine",
        choices=["thread", "process", "both"],
        default=None,
        help="polyvis serve --engine (uniform: default thread; mixed: default both, side by side)",
    )
    parser.add_argument(
        "--client",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the HTTP load generator (httpx: what this benchmark used before 2026-12-06)",
    )
    args = parser.parse_args()
    if args.client == "aiohttp" and aiohttp is None:
        sys.exit(NO_AIOHTTP)
    return args


def header(args: argparse.Namespace, load_at_start: float, detail: str) -> str:
    from polyvis.nano.protocol import machine  # its CPU kernels decide the figures

    cpu = machine()
    return (
        f"model: {Path(args.model).name if args.model else 'nano-tiny (random)'}, device: "
        f"{args.device or 'default'}, {cpu}, server threads: {args.server_threads or 'default'}, "
        f"load average at start: {load_at_start:.1f}, HTTP client: {args.client}, {detail}, "
        f"{args.requests} requests per "
        f"run, one {args.image_size}x{args.image_size} image per request, window "
        f"{args.window_ms} ms, newcomers wait at most {args.max_waiting_steps} steps (or until "
        f"{args.waiting_served_ratio}x the running rows wait)\n"
    )


# One measured run: seconds, each request's latency, answers, completion tokens, mean prefill group,
# this process's CPU milliseconds per request (the HTTP clients'; at the batcher, its own too).
Run = tuple[float, list[float], list[str], list[int], float, float]


def alternate(run: Callable[[int], Run], clients: int, repeat: int, label: str) -> dict[str, Run]:
    """One at a time and continuous, `repeat` times each in the order A B B A A B ..., so a
    drift in the machine's other load hits both alike; times add up, latencies are averaged
    per request, and the answers must be the same every time (else they are reported as None)."""
    modes = [("one at a time", 1), ("continuous", clients)]
    runs: dict[str, list[Run]] = {}
    for rep in range(repeat):
        for name, n in modes if rep % 2 == 0 else modes[::-1]:
            r = run(n)
            print(f"  {label} {name}: {len(r[1]) / r[0]:.2f} req/s", file=sys.stderr)
            runs.setdefault(name, []).append(r)
    out = {}
    for name, rs in runs.items():
        lat = [sum(r[1][i] for r in rs) / len(rs) for i in range(len(rs[0][1]))]
        same = all(r[2:4] == rs[0][2:4] for r in rs)
        texts = rs[0][2] if same else [None] * len(lat)
        group = sum(r[4] for r in rs) / len(rs)
        cpu = sum(r[5] for r in rs) / len(rs)
        out[name] = (sum(r[0] for r in rs) / len(rs), lat, texts, rs[0][3], group, cpu)
    return out


def http_runs(
    model_dir: Path, args: argparse.Namespace, bodies: list[dict], clients: int, engine: str
):
    """The requests through `polyvis serve` (its own process), from closed-loop HTTP clients."""
    with ServerProcess(model_dir, args.max_batch, args, engine) as url:
        asyncio.run(load(url, bodies[:clients], clients, args.client))  # warm-up

        def run(n: int) -> Run:
            before = httpx.get(f"{url}/health").json()
            seconds, lat, answers, cpu = asyncio.run(load(url, bodies, n, args.client))
            after = httpx.get(f"{url}/health").json()
            group = (after["requests"] - before["requests"]) / max(
                1, after["batches"] - before["batches"]
            )
            texts = [a["choices"][0]["message"]["content"] for a in answers]
            tokens = [a["usage"]["completion_tokens"] for a in answers]
            return seconds, lat, texts, tokens, group, 1000 * cpu / len(bodies)

        return alternate(run, clients, args.repeat, f"HTTP, engine {engine}")


def batcher_runs(model_dir: Path, args: argparse.Namespace, limits: list[int], clients: int):
    """The same requests straight to a Batcher in this process (no HTTP, images preprocessed
    beforehand): what the scheduler itself gains, apart from the server's per-request costs."""
    from polyvis.models.build import load_model
    from polyvis.serve.batcher import Batcher
    from polyvis.serve.jobs import GenerationParams

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    model, proc = load_model(model_dir, device=args.device)
    prompts = [
        proc.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTIONS[i % 4]}"}])
        for i in range(len(limits))
    ]
    pixels = [
        proc.preprocess_images([request_image(i, args.image_size)]) for i in range(len(limits))
    ]
    batcher = Batcher(
        model,
        proc,
        args.max_batch,
        args.window_ms,
        max_queue=4 * len(limits),
        max_waiting_steps=args.max_waiting_steps,
        waiting_served_ratio=args.waiting_served_ratio,
    )
    batcher.start()

    def run(n: int, count: int = len(limits)) -> Run:
        lat, answers, errors = [0.0] * count, [None] * count, []
        todo, lock = list(range(count)), threading.Lock()

        def client() -> None:
            while not errors:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                t0 = time.perf_counter()
                try:
                    answers[i] = batcher.generate(
                        prompts[i], pixels[i], GenerationParams(max_tokens=limits[i])
                    )
                except Exception as err:
                    errors.append(err)
                lat[i] = time.perf_counter() - t0

        before = dict(batcher.stats)
        cpu0 = time.process_time()  # the clients' threads and the batcher's together
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        group = (batcher.stats["requests"] - before["requests"]) / max(
            1, batcher.stats["batches"] - before["batches"]
        )
        texts = [a.text for a in answers]
        cpu = 1000 * (time.process_time() - cpu0) / count
        return seconds, lat, texts, [a.completion_tokens for a in answers], group, cpu

    try:
        run(clients, min(clients, len(limits)))  # warm-up
        return alternate(run, clients, args.repeat, "batcher"), costs(model, proc, pixels[0])
    finally:
        batcher.stop()


def costs(model: Any, proc: Any, pixels: torch.Tensor) -> str:
    """Median milliseconds of a prefill (1 and 4 requests, one image each) and of a decoding
    step (1 and 32 rows), in this process: what one newcomer and one token cost."""
    from polyvis.serve.decode_batch import DecodeBatch

    prompt = proc.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTIONS[0]}"}])
    ids = proc.tokenizer(proc.expand_image_tokens(prompt))["input_ids"]
    pad = proc.tokenizer.pad_token_id or 0

    def median_ms(fn: Callable[..., object], *fn_args: object, n: int = 21) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(*fn_args)
            times.append(time.perf_counter() - t0)
        return 1000 * sorted(times)[n // 2]

    def prefill(rows: int) -> DecodeBatch:
        return DecodeBatch.prefill(
            model, [ids] * rows, pixels.repeat(rows, 1, 1, 1, 1), pad, [0] * rows
        )[0]

    out = [f"prefill of {rows}: {median_ms(prefill, rows):.1f} ms" for rows in (1, 4)]
    for rows in (1, 32):
        # each step grows the cache by one column; 21 steps barely change the cost
        step = median_ms(prefill(rows).step, model, torch.zeros(rows, dtype=torch.long))
        out.append(f"decoding step of {rows}: {step:.1f} ms")
    return ", ".join(out)


def mixed(args: argparse.Namespace, model_dir: Path, load_at_start: float) -> int:
    """Short and long requests: continuous batching against the same requests one at a time,
    through `polyvis serve` (HTTP) and straight to the batcher in this process."""
    rng = random.Random(args.seed)
    half = args.requests // 2
    limits = [rng.randint(1, 8) for _ in range(half)]
    limits += [rng.randint(24, 64) for _ in range(args.requests - half)]
    rng.shuffle(limits)
    bodies = [request_body(i, m, args.image_size) for i, m in enumerate(limits)]
    short = [i for i, m in enumerate(limits) if m <= 8]
    long_ = [i for i, m in enumerate(limits) if m > 8]
    clients = (args.clients or [32])[0]
    engines = ["thread", "process"] if args.engine in (None, "both") else [args.engine]
    paths = {f"HTTP, engine {e}": http_runs(model_dir, args, bodies, clients, e) for e in engines}
    paths["batcher"], cost_line = batcher_runs(model_dir, args, limits, clients)

    detail = (
        f"{len(short)} requests of 1-8 tokens and {len(long_)} of 24-64 (seed {args.seed}, "
        f"{sum(limits)} tokens in all), each mode run {args.repeat}x alternating"
    )
    print(header(args, load_at_start, detail))
    print(
        "| path | run | clients | req/s | tokens/s | mean ms short | mean ms long | short / long "
        "| mean prefill group | this process's CPU ms / request |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path, runs in paths.items():
        for name, (seconds, lat, _, tokens, group, cpu) in runs.items():
            n = 1 if name == "one at a time" else clients
            s_ms = 1000 * sum(lat[i] for i in short) / len(short)
            l_ms = 1000 * sum(lat[i] for i in long_) / len(long_)
            print(
                f"| {path} | {name} | {n} | {len(bodies) / seconds:.2f} | "
                f"{sum(tokens) / seconds:.0f} | {s_ms:.0f} | {l_ms:.0f} | {s_ms / l_ms:.2f} "
                f"| {group:.1f} | {cpu:.2f} |"
            )
    print()
    for path, runs in paths.items():
        ratio = runs["one at a time"][0] / runs["continuous"][0]
        print(f"{path}: continuous / one at a time req/s: x{ratio:.2f}")
    answers = [(r[2], r[3]) for runs in paths.values() for r in runs.values()]
    same = all(a == answers[0] for a in answers) and None not in answers[0][0]
    print(f"greedy answers identical to one at a time (every path): {'yes' if same else 'NO'}")
    print(f"model costs (median, this process): {cost_line}")
    return 0 if same else 1


def main() -> int:
    args = parse_args()
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every number below
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_tiny(Path(tmp.name) / "nano-tiny")
    if args.scenario == "mixed":
        code = mixed(args, model_dir, load_at_start)
        tmp.cleanup()
        return code
    args.clients = args.clients or [1, 8, 32]
    if args.engine == "both":
        sys.exit("bench_serve.py: --engine both is for --scenario mixed; give thread or process")
    engine = args.engine or "thread"
    bodies = [request_body(i, args.max_tokens, args.image_size) for i in range(args.requests)]
    rows, answers_by_mode = [], {}
    modes = {"batched": args.max_batch, "unbatched": 1}
    # Both servers run side by side (the idle one costs nothing) and the modes alternate for each
    # client count, so a change in the machine's other load does not favour one mode.
    with contextlib.ExitStack() as stack:
        urls = {
            mode: stack.enter_context(ServerProcess(model_dir, mb, args, engine))
            for mode, mb in modes.items()
        }
        warm = max(args.clients)
        for url in urls.values():  # warm-up: connections, kernels, batch shapes
            asyncio.run(load(url, bodies[:warm], warm, args.client))
        for clients in args.clients:
            for mode, url in urls.items():
                before = httpx.get(f"{url}/health").json()
                seconds, lat, answers, _ = asyncio.run(load(url, bodies, clients, args.client))
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

    print(header(args, load_at_start, f"max_tokens: {args.max_tokens}"))
    print("| mode | clients | req/s | tokens/s | p50 ms | p90 ms | p99 ms | mean prefill group |")
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
