"""The tiny encoders the tiling tests share: a CLIP tower that can be tiled beside an untiled
DINOv2, on configs/nano-tiny.yaml."""

from __future__ import annotations

from pathlib import Path

NANO_TINY = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"
CLIP = (
    "{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, intermediate_size: 64, "
    "num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, patch_size: 8}, layers: [-2]"
)
TILED = CLIP + ", tiling: {grids: [[1, 2], [2, 1], [2, 2]], thumbnail: true}}"
DINO = (
    "{name: dino, config: {model_type: dinov2, hidden_size: 48, intermediate_size: 96, "
    "num_hidden_layers: 2, num_attention_heads: 2, image_size: 28, patch_size: 14}, layers: [-1]}"
)
