"""Shared pieces of the server tests: a tiny model with varied answers, a running server,
request builders and reference answers computed without the server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from polyvis.models.build import load_model, save_model
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.settings import ServeSettings

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORDS = [
    "what",
    "is",
    "in",
    "the",
    "image",
    "describe",
    "the",
    "picture",
    "how",
    "many",
    "objects",
    "are",
    "there",
    "red",
    "blue",
    "square",
]


@pytest.fixture(scope="module", name="sharp_model_dir")
def sharp_model_dir_fixture(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger random weights: its greedy answers differ from prompt to prompt
    (the seed-0 model answers one token forever, which would make equality tests vacuous)."""
    model, processor = load_model(tiny_model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(
                    torch.randn(p.shape, generator=gen) * (0.3 if "language_model" in name else 0.1)
                )
    return save_model(model, processor, tmp_path_factory.mktemp("sharp") / "model")


@pytest.fixture(scope="module", name="reference")
def reference_fixture(sharp_model_dir: Path):
    """A separate copy of the model, for answers computed without the server."""
    return load_model(sharp_model_dir)


@pytest.fixture(scope="module", name="image_dir")
def image_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("allowed")
    noise(7, 24, 20).save(d / "cat.png")
    return d


@pytest.fixture(scope="module", name="server")
def server_fixture(sharp_model_dir: Path, image_dir: Path):
    settings = ServeSettings(
        model_name="tiny",
        api_key=KEY,
        max_batch=32,
        batch_window_ms=20,
        max_tokens_limit=32,
        max_body_bytes=256 * 1024,
        max_image_bytes=64 * 1024,
        max_image_pixels=200 * 200,
        max_images=3,
        allow_local_files=image_dir,
    )
    with BackgroundServer(create_app(sharp_model_dir, settings)) as url:
        yield url


def noise(seed: int, w: int, h: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user(text: str, images: list[Image.Image] = ()) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_uri(im)}} for im in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def answer_alone(
    reference, text: str, images: list[Image.Image], max_tokens: int
) -> tuple[str, str, int]:
    """(text, finish_reason, prompt_tokens) from model.generate on this request alone."""
    model, proc = reference
    content = "\n".join(["<image>"] * len(images) + [text])
    prompt = proc.apply_chat_template([{"role": "user", "content": content}])
    batch = proc(text=[prompt], images=[images], padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False)
    ids = out[0, batch["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    reason = "stop" if eos in ids else "length"
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return proc.decode(ids), reason, batch["input_ids"].shape[1]


def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=b) for b in bodies)
            )

    return asyncio.run(run())


def read_stream(client: httpx.Client, body: dict) -> tuple[list[dict], list[str]]:
    chunks, raw = [], []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                raw.append(line)
                if line != "data: [DONE]":
                    chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks, raw


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
