"""`model.fusion.scales: auto`: measured when training starts on the run's own training images,
written into RUN/config.yaml and the saved model, taken from the starting model with init_from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from polyvis.config import load_config
from polyvis.data.images import load_image
from polyvis.errors import ConfigError
from polyvis.models.build import build_model
from polyvis.train import scales as scales_module
from polyvis.train import train
from polyvis.train.scales import resolve_scales, sample_images

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
FAMILIES = ("scene", "ocr")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(list(FAMILIES), 12, 0, out, image_size=64, progress=False)
    return out


def config(synth_dir: Path, *extra: str):
    return load_config(
        NANO_TINY,
        [
            "train.stage=finetune",
            "train.max_steps=1",
            "train.batch_size=2",
            f"data.synthetic={{families: [scene, ocr], n: 12, seed: 0, size: 64, dir: {synth_dir}}}",
            "model.fusion.scales=auto",
            "model.fusion.scale_images=6",
            *extra,
        ],
    )


def reference_scales(synth_dir: Path, n: int, reference: int) -> list[float]:
    """By hand: the first distinct images of each family in turn, each encoder's feature RMS
    from the whole model built with seed 0 (the weights the measurement's encoders get)."""
    per_family = []
    for fam in FAMILIES:
        path = synth_dir / fam / "train.jsonl"
        images: list[Path] = []
        for line in path.read_text().splitlines():
            img = path.parent / json.loads(line)["image"]
            if img not in images:
                images.append(img)
        per_family.append(images)
    images = [img for pair in zip(*per_family) for img in pair][:n]
    torch.manual_seed(0)
    model, processor = build_model(load_config(NANO_TINY))
    with torch.no_grad():
        feats = model.encode_images(processor.preprocess_images([load_image(p) for p in images]))
    rms = [torch.cat(layers, -1).pow(2).mean().sqrt().item() for layers in feats]
    return [rms[reference] / r for r in rms]


def test_sample_images_takes_files_in_turn_without_repeats(tmp_path):
    files = []
    for fam in ("a", "b"):
        lines = [
            {"id": f"{fam}{i}", "image": f"{i}.png", "conversations": []} for i in (0, 0, 1, 2)
        ]
        path = tmp_path / fam / "train.jsonl"
        path.parent.mkdir()
        path.write_text("\n".join(json.dumps(r) for r in lines))
        files.append(path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert sample_images(files, 5) == [
        a / "0.png",
        b / "0.png",
        a / "1.png",
        b / "1.png",
        a / "2.png",
    ]
    assert len(sample_images(files, 50)) == 6
    assert sample_images(files, 2, image_root="/imgs") == [Path("/imgs/0.png")] * 2


def test_auto_scales_are_measured_into_the_run_and_the_model(tmp_path, synth_dir, monkeypatch):
    expected = reference_scales(synth_dir, 6, reference=0)
    run = tmp_path / "run"
    final = train(config(synth_dir), run, progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["fusion"]
    assert set(saved) == {"type", "align", "scales"}  # auto and its options are gone
    assert saved["scales"][0] == 1.0
    assert saved["scales"] == pytest.approx(expected, abs=1.5e-4)
    assert all(s == round(s, 4) for s in saved["scales"])
    assert json.loads((final / "config.json").read_text())["fusion"] == saved
    assert yaml.safe_load((final / "polyvis.yaml").read_text())["model"]["fusion"] == saved
    # the same command again: the resolved configs compare equal, so the run is recognised
    assert train(config(synth_dir), run, progress=False) == final

    # starting from that model, its scales are taken, not measured again
    def no_measuring(*args):
        raise AssertionError("measured although train.init_from has the scales")

    monkeypatch.setattr(scales_module, "_MEASURED", {})
    monkeypatch.setattr(scales_module, "_measure", no_measuring)
    second = tmp_path / "second"
    train(config(synth_dir, f"train.init_from={run}"), second, progress=False)
    assert yaml.safe_load((second / "config.yaml").read_text())["model"]["fusion"] == saved


def test_reference_encoder_is_scale_reference_or_init_encoder(synth_dir):
    expected = [round(s, 4) for s in reference_scales(synth_dir, 6, reference=1)]
    by_name = resolve_scales(config(synth_dir, "model.fusion.scale_reference=dino"))
    # init_encoder's projector expects that encoder's features as they are: it is the reference
    by_init = resolve_scales(
        config(
            synth_dir,
            "model.adapter={type: linear, init_from: p.safetensors, init_encoder: dino}",
        )
    )
    for cfg in (by_name, by_init):
        assert cfg.model.fusion["scales"][1] == 1.0
        assert cfg.model.fusion["scales"] == pytest.approx(expected, abs=1.5e-4)
        assert "scale_reference" not in cfg.model.fusion and "scale_images" not in cfg.model.fusion


def test_auto_needs_two_encoders_and_concat_channel(synth_dir):
    one = (
        "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, "
        "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, "
        "patch_size: 8}}]"
    )
    with pytest.raises(ConfigError) as err:
        config(synth_dir, one)
    assert err.value.field == "model.fusion.scales" and "over 1" in str(err.value)
    with pytest.raises(ConfigError, match=r"^model\.fusion\.scales: .*\(got add over 2\)"):
        config(synth_dir, "model.fusion={type: add, scales: auto}")
