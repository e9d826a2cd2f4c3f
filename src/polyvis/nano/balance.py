"""Balance the encoders of a concat-channel model by the size of their features.

clip-nano's penultimate-layer features are about 1.8 times the size (RMS) of vary-nano's last
layer (a ratio of 0.543 over 64 training images of the six families). Concatenated as they are,
the adapter's clip-nano columns (growing from zero, with Adam moving every weight at the same
rate) change its output that much faster than vary-nano's, and the mixed model forgot part of
vary-nano's reading (docs/nano.md, item 7). `balanced` measures each encoder's feature RMS on a
few training images and sets `model.fusion.scales` so that every encoder matches the reference
one (the expert whose projector the run starts from, or the first): a fixed factor per encoder,
stored in the config and saved with the model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from polyvis.errors import ConfigError

# (dtype, encoders, images) -> RMS per encoder: an ablation's seeds share one measurement
_MEASURED: dict[str, list[float]] = {}


def feature_rms(config: dict[str, Any], images: list[Path]) -> list[float]:
    """Each encoder's RMS over its selected layers' features of `images`, in config order.

    Only the encoders are built (not the LM); the result is kept for the same encoders and images.
    """
    from polyvis.config import load_config

    if not images:
        raise ConfigError("data.train", "no images to measure the encoders' features on")
    section = load_config(config).model
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


def _measure(section: Any, images: list[Path]) -> list[float]:
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
    rms = feature_rms(config, images)
    out = copy.deepcopy(config)
    out["model"]["fusion"] = {**fusion, "scales": [round(rms[ref] / r, 4) for r in rms]}
    return out
