"""Balance the encoders of a concat-channel model by the size of their features.

clip-nano's penultimate-layer features are about 2.3 times the size (RMS) of vary-nano's last
layer. Concatenated as they are, the adapter's clip-nano columns (growing from zero, with Adam
moving every weight at the same rate) change its output 2.3 times faster than vary-nano's, and
the mixed model forgot part of vary-nano's reading (docs/nano.md, item 7). `balanced` measures
each encoder's feature RMS on a few training images and sets `model.fusion.scales` so that
every encoder matches the reference one (the expert whose projector the run starts from, or
the first): a fixed factor per encoder, stored in the config and saved with the model.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from polyvis.errors import ConfigError


def feature_rms(config: dict[str, Any], images: list[Path]) -> list[float]:
    """Each encoder's RMS over its selected layers' features of `images`, in config order."""
    from polyvis.config import load_config
    from polyvis.data.images import load_image
    from polyvis.models.build import build_model, quiet_transformers

    if not images:
        raise ConfigError("data.train", "no images to measure the encoders' features on")
    cfg = load_config(config)
    # seeded without touching the caller's generator: an encoder built from a config (random
    # weights) then measures the same every time
    with torch.random.fork_rng(), quiet_transformers():
        torch.manual_seed(0)
        model, processor = build_model(cfg)
    model.eval()
    pixels = processor.preprocess_images([load_image(p) for p in images])
    with torch.no_grad():
        feats = model.encode_images(pixels)
    return [
        torch.cat([x.float() for x in layers], -1).pow(2).mean().sqrt().item() for layers in feats
    ]


def sample_images(records_files: list[Path], n: int) -> list[Path]:
    """Up to n distinct images, taken in turn from each records file (the first of each)."""
    from polyvis.data.records import read_records, record_image_paths

    per_file = []
    for path in records_files:
        seen: dict[Path, None] = {}
        for rec in read_records(path, validate=False):
            for img in record_image_paths(rec, Path(path).parent):
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


@lru_cache(maxsize=16)
def _scales(config: str, images: tuple[Path, ...], reference: int) -> tuple[float, ...]:
    rms = feature_rms(json.loads(config), list(images))
    return tuple(round(rms[reference] / r, 4) for r in rms)


def balanced(
    config: dict[str, Any], images: list[Path], reference: str | None = None
) -> dict[str, Any]:
    """A copy of `config` whose concat-channel fusion scales each encoder's features to the RMS
    of `reference` (an encoder name; default the first). Other fusions, one encoder or scales
    already given: returned unchanged."""
    model = config.get("model", {})
    fusion = model.get("fusion") or {}
    encoders = model.get("encoders") or []
    if fusion.get("type") != "concat-channel" or len(encoders) < 2 or fusion.get("scales"):
        return config
    names = [e["name"] for e in encoders]
    if reference is not None and reference not in names:
        raise ConfigError("model.encoders", f"no encoder {reference!r} (have {', '.join(names)})")
    ref = names.index(reference) if reference is not None else 0
    scales = _scales(json.dumps(config, sort_keys=True), tuple(images), ref)
    out = copy.deepcopy(config)
    out["model"]["fusion"] = {**fusion, "scales": list(scales)}
    return out
