"""Shared pieces of the web tests: several tiny models that answer differently, a server that
serves them side by side, and reference answers computed without the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from polyvis.models.build import load_model, save_model
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.settings import ServeSettings

KEY = "web-key"
MODELS = ("alpha", "beta", "gamma", "delta")


def sharp_copy(tiny_model_dir: Path, seed: int, out: Path) -> Path:
    """The tiny model with larger random weights drawn from `seed`: greedy answers that differ
    from prompt to prompt and from seed to seed (as _serve_helpers' sharp model, seed 1)."""
    model, processor = load_model(tiny_model_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                scale = 0.3 if "language_model" in name else 0.1
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return save_model(model, processor, out)


@pytest.fixture(scope="module", name="model_dirs")
def model_dirs_fixture(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    return {
        name: sharp_copy(tiny_model_dir, 1 + i, tmp_path_factory.mktemp(name) / "model")
        for i, name in enumerate(MODELS)
    }


@pytest.fixture(scope="module", name="references")
def references_fixture(model_dirs: dict[str, Path]) -> dict:
    """Separate copies of the models, for answers computed without the server."""
    return {name: load_model(d) for name, d in model_dirs.items()}


@pytest.fixture(scope="module", name="web_server")
def web_server_fixture(model_dirs: dict[str, Path]):
    settings = ServeSettings(api_key=KEY, max_tokens_limit=32, batch_window_ms=5)
    with BackgroundServer(create_app(model_dirs, settings)) as url:
        yield url


def reference_answer(
    reference, turns: list[tuple[str, str | None]], image: Image.Image | None, max_tokens: int
) -> str:
    """Greedy answer to the last of `turns` ((question, answer) pairs; the image, if any, in the
    first question), as the server renders a conversation: "<image>" then the text."""
    model, proc = reference
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = f"<image>\n{question}" if i == 0 and image is not None else question
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    prompt = proc.apply_chat_template(messages)
    images = [[image]] if image is not None else None
    batch = proc(text=[prompt], images=images, padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False)
    ids = out[0, batch["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    return proc.decode(ids[: ids.index(eos)] if eos in ids else ids)
