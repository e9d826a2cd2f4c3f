"""Shared fixtures: tiny random models built from configs, saved to a temp dir, loaded by path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Generated data and nano experts go to a per-session folder, never the user's cache; removed
# when the session ends, so that test runs do not pile folders up in /tmp.
os.environ["POLYVIS_CACHE"] = tempfile.mkdtemp(prefix="polyvis-test-cache-")
atexit.register(shutil.rmtree, os.environ["POLYVIS_CACHE"], ignore_errors=True)
# Tiny models gain nothing from more threads, and on a shared 2-core machine they lose a lot.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/nano-tiny.yaml built (random weights, seed 0) and saved; load it by path."""
    from polyvis.config import load_config
    from polyvis.models.build import build_model, save_model

    torch.manual_seed(0)
    model, processor = build_model(load_config(NANO_TINY))
    return save_model(model, processor, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_single_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-encoder (CLIP) model with an mlp adapter: the LLaVA-compatible shape."""
    from polyvis.config import load_config
    from polyvis.models.build import build_model, save_model

    torch.manual_seed(0)
    cfg = load_config(
        NANO_TINY,
        [
            "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 64, "
            "intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, "
            "patch_size: 8}, layers: [-2]}]",
            "model.fusion={type: concat-channel}",
        ],
    )
    model, processor = build_model(cfg)
    return save_model(model, processor, tmp_path_factory.mktemp("tiny1") / "model")
