"""`model.fusion.scales: auto`: balance a concat-channel model's encoders by their feature size.

Encoders' features can differ several-fold in size (RMS). Concatenated as they are, with Adam
moving every adapter weight at the same rate, the larger encoder's columns change the adapter's
output that much faster and can drown the others. `auto` measures each encoder's feature RMS on
`scale_images` training images (default 64) when training starts and sets one fixed factor per
encoder so that every encoder matches `scale_reference` (default: the adapter's `init_encoder`,
else the first encoder). The numbers replace `auto` in the run's config.yaml and the saved model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from polyvis.config import AUTO, SCALE_KEYS, Config, ModelSection, config_to_dict, load_config
from polyvis.errors import ConfigError

DEFAULT_IMAGES = 64

# (dtype, encoders, images) -> RMS per encoder: runs in one process (seeds) share a measurement
_MEASURED: dict[str, list[float]] = {}


def sample_images(
    records_files: list[Path], n: int, image_root: str | Path | None = None
) -> list[Path]:
    """Up to n distinct images, taken in turn from each records file (the first of each)."""
    from polyvis.data.records import read_records, record_image_paths

    per_file = []
    for path in records_files:
        root = Path(image_root) if image_root is not None else Path(path).parent
        seen: dict[Path, None] = {}
        for rec in read_records(path, validate=False):
            for img in record_image_paths(rec, root):
                seen.setdefault(img)
            if len(seen) >= n:
                break
        per_file.append(list(seen))
    out: list[Path] = []
    for i in range(n):
        for images in per_file:
            if i < len(images) and len(out) < n:
                out.append(images[i])
    return out


def feature_rms(section: ModelSection, images: list[Path]) -> list[float]:
    """Each encoder's RMS over its selected layers' features of `images`, in config order.

    Only the encoders are built (not the LM); the result is kept for the same encoders and images.
    """
    if not images:
        raise ConfigError("data.train", "no images to measure the encoders' features on")
    key = json.dumps(
        [
            section.dtype,
            [e.model_dump(mode="json") for e in section.encoders],
            [str(p) for p in images],
        ],
        sort_keys=True,
    )
    if key not in _MEASURED:
        _MEASURED[key] = _measure(section, images)
    return list(_MEASURED[key])


def _measure(section: ModelSection, images: list[Path]) -> list[float]:
    from polyvis.data.images import load_image
    from polyvis.models.build import DTYPES, build_encoder, quiet_transformers
    from polyvis.models.encoders import VisionEncoder

    pictures = [load_image(p) for p in images]
    rms = []
    # seeded without touching the caller's generator: encoders built from a config (random
    # weights) get the weights build_model gives them after torch.manual_seed(0)
    with torch.random.fork_rng(), quiet_transformers(), torch.no_grad():
        torch.manual_seed(0)
        for i, spec in enumerate(section.encoders):
            backbone, proc, entry = build_encoder(spec, i, DTYPES[section.dtype])
            encoder = VisionEncoder(backbone, entry).eval()
            pixels = proc(images=pictures, return_tensors="pt")["pixel_values"]
            feats = torch.cat([x.float() for x in encoder(pixels)], -1)
            rms.append(feats.pow(2).mean().sqrt().item())
    return rms


def reference_encoder(section: ModelSection) -> str:
    """The encoder the others are scaled to: scale_reference, else init_encoder, else the first."""
    fusion = section.fusion
    return (
        fusion.get("scale_reference")
        or section.adapter.get("init_encoder")
        or section.encoders[0].name
    )


def measured_scales(section: ModelSection, images: list[Path]) -> list[float]:
    """One factor per encoder that brings its feature RMS to the reference encoder's."""
    names = [e.name for e in section.encoders]
    ref = names.index(reference_encoder(section))
    rms = feature_rms(section, images)
    return [round(rms[ref] / r, 4) for r in rms]


def with_scales(cfg: Config, scales: list[float] | None) -> Config:
    """`cfg` with `scales: auto` (and its options) replaced by numbers (None: no scales)."""
    data = config_to_dict(cfg)
    fusion = {k: v for k, v in data["model"]["fusion"].items() if k not in (*SCALE_KEYS, "scales")}
    if scales is not None:
        fusion["scales"] = list(scales)
    data["model"]["fusion"] = fusion
    return load_config(data)


def resolve_scales(cfg: Config, init_config: dict[str, Any] | None = None) -> Config:
    """`cfg` with `model.fusion.scales: auto` resolved (unchanged without it).

    `init_config`: the config.json of the model training starts from (train.init_from), whose
    fusion already has its scales; otherwise they are measured on the run's training images.
    """
    if cfg.model.fusion.get("scales") != AUTO:
        return cfg
    if init_config is not None:
        return with_scales(cfg, (init_config.get("fusion") or {}).get("scales"))
    from polyvis.train.data import data_files

    n = int(cfg.model.fusion.get("scale_images", DEFAULT_IMAGES))
    images = sample_images(data_files(cfg, "train"), n, cfg.data.image_root)
    return with_scales(cfg, measured_scales(cfg.model, images))
