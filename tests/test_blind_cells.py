"""`grid.blind`: each expert read blind (every image the same input), a control cell beside the
random-init twins: its weights are the expert's, its image tokens carry no image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation
from polyvis.nano.fair_cells import BLIND_STD
from polyvis.nano.fair_plan import plan_fair

SPEC = {
    "nano": True,
    "quick": True,
    "grid": {
        "adapter": [{"type": "mlp", "depth": 2}],
        "encoders": [["clip"], ["clip", "vary"]],
        "fusion": ["add"],
        "controls": ["clip"],
        "blind": ["clip", "vary"],
    },
}


def _load(tmp_path: Path, spec: dict) -> dict:
    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_ablation(path)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("blind")
    return plan_fair(_load(tmp, SPEC), tmp / "out")


def test_blind_cells_are_the_experts_read_blind_and_no_baseline(plan):
    names = [c.name for c in plan.cells]
    assert names == ["clip", "clip+vary add", "clip (random init)", "clip (blind)", "vary (blind)"]
    cells = {c.name: c for c in plan.cells}
    for expert in ("clip", "vary"):
        blind = cells[f"{expert} (blind)"]
        (enc,) = blind.model["encoders"]
        seen = plan.world.encoders[expert]
        # the expert's own checkpoint and layers; only the normalisation differs
        assert {k: v for k, v in enc.items() if k != "image_std"} == {
            k: v for k, v in seen.items() if k != "image_std"
        }
        assert enc["image_std"] == [BLIND_STD] * 3
        assert not blind.baseline and blind.meta["blind"] is True
        assert blind.meta["encoders"] == [expert] and blind.meta["fusion"] is None
    # only the blind cells are marked; the expert alone is still the baseline
    assert cells["clip"].baseline and "blind" not in cells["clip"].meta
    assert "blind" not in cells["clip (random init)"].meta


def test_a_blind_expert_gives_every_image_the_same_features(plan):
    from polyvis.models.build import build_model

    cells = {c.name: c for c in plan.cells}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    images.append(Image.new("RGB", (64, 64), "white"))
    for name in ("clip", "clip (blind)", "vary (blind)"):
        cell = cells[name]
        setting = plan.cell_settings(cell)[0]
        model, processor = build_model(plan.spec(cell, setting, 0, "val").config)
        with torch.no_grad():
            (layers,) = model.encode_images(processor.preprocess_images(images))
        feats = layers[-1]
        gap = max((feats[0] - feats[i]).abs().max().item() for i in range(1, len(images)))
        scale = feats.abs().mean().item()
        if name == "clip":  # the expert itself tells the images apart
            assert gap > 0.1 * scale
        else:  # read blind, its features differ by float rounding only (about 1e-7 here)
            assert gap < 1e-5 * scale, (name, gap, scale)


def test_blind_names_a_known_encoder(tmp_path: Path):
    spec = {**SPEC, "grid": {**SPEC["grid"], "blind": ["clip", "lidar"]}}
    with pytest.raises(ConfigError, match=r"grid.blind: unknown encoder 'lidar'"):
        plan_fair(_load(tmp_path, spec), tmp_path / "out")
    spec = {**SPEC, "grid": {**SPEC["grid"], "blind": "clip"}}
    with pytest.raises(ConfigError, match=r"grid.blind: must be a list"):
        _load(tmp_path, spec)
