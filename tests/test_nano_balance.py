"""Encoder balance for concat-channel: measured scales make every encoder's features the size of
the reference encoder's, and leave other configs alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polyvis.config import load_config
from polyvis.data.images import load_image
from polyvis.errors import ConfigError
from polyvis.models.build import build_model
from polyvis.models.fusion.common import in_width
from polyvis.nano.balance import balanced, feature_rms, sample_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = load_config(ROOT / "configs" / "nano-tiny.yaml")
    return cfg.model_dump(mode="json", exclude_none=True)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[Path]:
    """Two records files, three images each (one image asked about twice)."""
    root = tmp_path_factory.mktemp("balance")
    rng = np.random.default_rng(0)
    files = []
    for fam in ("a", "b"):
        (root / fam / "images").mkdir(parents=True)
        lines = []
        for i in range(3):
            arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / fam / "images" / f"{i}.png")
            for q in range(2 if i == 0 else 1):
                lines.append(
                    {
                        "id": f"{fam}-{i}-{q}",
                        "image": f"images/{i}.png",
                        "conversations": [
                            {"from": "human", "value": "<image>\nq"},
                            {"from": "gpt", "value": "a"},
                        ],
                    }  # fmt: skip
                )
        path = root / fam / "train.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in lines))
        files.append(path)
    return files


def test_sample_images_takes_families_in_turn_without_repeats(records):
    got = sample_images(records, 5)
    a, b = records[0].parent / "images", records[1].parent / "images"
    assert got == [a / "0.png", b / "0.png", a / "1.png", b / "1.png", a / "2.png"]
    assert len(sample_images(records, 50)) == 6


def test_balanced_scales_match_the_reference_rms(config, records):
    images = sample_images(records, 6)
    out = balanced(config, images, reference="dino")
    assert config["model"]["fusion"].get("scales") is None  # the input is not changed
    scales = out["model"]["fusion"]["scales"]
    assert len(scales) == 2 and scales[1] == 1.0
    rms = feature_rms(config, images)
    assert scales[0] == pytest.approx(rms[1] / rms[0], rel=1e-3)
    # with the scales in the model (the same weights: built with the same seed) both encoders'
    # contributions to the fusion are the same size
    torch.manual_seed(0)
    model, processor = build_model(load_config(out))
    feats = model.encode_images(processor.preprocess_images([load_image(p) for p in images]))
    fused = model.fusion(feats).detach()
    clip_width = in_width(model.fusion.encoders[0])
    clip_rms = fused[..., :clip_width].pow(2).mean().sqrt().item()
    assert clip_rms == pytest.approx(rms[1], rel=1e-3)


def test_balanced_leaves_other_configs_alone(config, records):
    images = sample_images(records, 2)
    other = copy.deepcopy(config)
    other["model"]["fusion"] = {"type": "omnifusion"}
    assert balanced(other, images) is other
    given = copy.deepcopy(config)
    given["model"]["fusion"]["scales"] = [1.0, 2.0]
    assert balanced(given, images) is given
    with pytest.raises(ConfigError, match=r"model\.encoders.*'vary'"):
        balanced(config, images, reference="vary")
    with pytest.raises(ConfigError, match=r"data\.train"):
        feature_rms(config, [])
