"""Any transformers vision backbone as a polyvis encoder.

An encoder returns the hidden states of its selected layers as token sequences (B, N, D), with the
class and register tokens dropped by what the backbone actually produces (N minus the patch grid),
not by habit. Layers above the deepest selected one are removed, so they are never computed (the
first block stays even for layers [0]: it is what reports the embedding output).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from polyvis.models.detector import DetectorEncoder, detector_from_config, is_detector

# Modules that act only on the last layer's output (final norms, poolers, heads). polyvis reads
# hidden states, so these are replaced by Identity: no wasted compute, no unused parameters (DDP).
_HEAD_NAMES = ("post_layernorm", "layernorm", "pooler", "head", "norm")


def vision_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """The vision part of a config: CLIP / SigLIP checkpoints hold text and vision towers."""
    return getattr(config, "vision_config", None) or config


def backbone_from_config(config: PretrainedConfig | dict[str, Any]) -> PreTrainedModel:
    """A randomly initialised vision backbone for a (vision) config."""
    if isinstance(config, dict):
        config = dict(config)
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    return AutoModel.from_config(vision_config_of(config))


def find_layer_list(backbone: nn.Module, num_layers: int) -> nn.ModuleList | None:
    """The ModuleList holding the transformer blocks (CLIP: encoder.layers, DINOv2: encoder.layer)."""
    best = None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, module)
    return best[1] if best else None


def num_hidden_layers(config: PretrainedConfig) -> int | None:
    return getattr(config, "num_hidden_layers", None)


def _truncate_stages(config: PretrainedConfig, keep_layers: int) -> None:
    """Backbone configs (DINOv2, ViT-like) name one stage per layer; a saved config whose
    out_features point past the kept layers would not load again."""
    if getattr(config, "stage_names", None) and hasattr(
        config, "set_output_features_output_indices"
    ):
        config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, keep_layers + 1)]
        config.set_output_features_output_indices(out_features=None, out_indices=None)


def prepare_backbone(backbone: PreTrainedModel, keep_layers: int | None) -> PreTrainedModel:
    """Drop blocks above `keep_layers` and the heads that only read the last layer.

    One block always stays: hidden state 0 (the embedding output) is recorded as the first
    block's input, so a backbone without blocks returns no hidden states at all.
    """
    total = num_hidden_layers(backbone.config)
    if keep_layers is not None:
        keep_layers = max(keep_layers, 1)
    if keep_layers is not None and total is not None and keep_layers < total:
        blocks = find_layer_list(backbone, total)
        if blocks is not None:
            del blocks[keep_layers:]
            backbone.config.num_hidden_layers = keep_layers
            _truncate_stages(backbone.config, keep_layers)
    for parent in (backbone, getattr(backbone, "vision_model", None)):
        if parent is None:
            continue
        for name in _HEAD_NAMES:
            if isinstance(getattr(parent, name, None), nn.Module):
                setattr(parent, name, nn.Identity())
    return backbone


def resolve_layers(layers: list[int] | str, total: int, field: str) -> list[int]:
    """Turn the config's layer list into sorted, absolute hidden-state indices (0 = embeddings)."""
    from polyvis.errors import ConfigError

    if layers == "all":
        return list(range(1, total + 1))
    out = []
    for idx in layers:
        if not -(total + 1) <= idx <= total:
            raise ConfigError(
                field,
                f"layer {idx} is out of range: the backbone has {total} layers "
                f"(valid indices {-(total + 1)}..{total}; 0 is the embedding output)",
            )
        out.append(idx if idx >= 0 else total + 1 + idx)
    if len(set(out)) != len(out):
        raise ConfigError(field, f"layers {list(layers)} name the same layer twice")
    return sorted(out)


class VisionEncoder(nn.Module):
    """A vision backbone plus the recipe for reading its features.

    entry: the encoder's record in PolyVisConfig.encoders: name, layers (absolute indices),
    num_prefix_tokens, grid, dim, image_size, interpolate_pos_encoding.
    """

    def __init__(self, backbone: PreTrainedModel, entry: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.name = entry["name"]
        self.layers = list(entry["layers"])
        self.num_prefix_tokens = int(entry.get("num_prefix_tokens", 0))
        self.grid = tuple(entry["grid"]) if entry.get("grid") else None
        self.dim = entry.get("dim")
        self.image_size = tuple(entry["image_size"])
        params = inspect.signature(backbone.forward).parameters
        self._extra_kwargs = (
            {"interpolate_pos_encoding": True}
            if entry.get("interpolate_pos_encoding") and "interpolate_pos_encoding" in params
            else {}
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (B, 3, H, W) -> one (B, N, D) tensor per selected layer."""
        param = next(self.backbone.parameters())
        out = self.backbone(
            pixel_values=pixel_values.to(param.dtype),
            output_hidden_states=True,
            return_dict=True,
            **self._extra_kwargs,
        )
        hidden = out.hidden_states
        feats = []
        for idx in self.layers:
            h = hidden[idx]
            if h.dim() == 4:  # convolutional backbones give (B, C, H, W) maps
                h = h.flatten(2).transpose(1, 2)
            feats.append(h[:, self.num_prefix_tokens :])
        return feats


def make_encoder(entry: dict[str, Any], backbone: PreTrainedModel | None = None) -> nn.Module:
    """The encoder module of a PolyVisConfig.encoders entry, on `backbone` (built from the entry's
    config when None): a DetectorEncoder for a detector (models/detector.py), else a VisionEncoder
    on the backbone truncated above its deepest selected layer."""
    if is_detector(entry):
        if backbone is None:
            backbone = detector_from_config(entry["config"], bool(entry.get("embed_boxes")))
        return DetectorEncoder(backbone, entry)
    if backbone is None:
        backbone = backbone_from_config(entry["config"])
    prepare_backbone(backbone, max(entry["layers"]))
    return VisionEncoder(backbone, entry)


def backbone_tied_weights(encoders: nn.ModuleList, prefix: str) -> dict[str, str]:
    """The backbones' own tied weights (Deformable DETR shares its heads across decoder layers),
    named from the model that holds `encoders` under `prefix`: without them such a backbone's
    saved model loads with missing keys."""
    out = {}
    for k, enc in enumerate(encoders):
        tied = getattr(enc.backbone, "all_tied_weights_keys", None) or {}
        out.update(
            {f"{prefix}.{k}.backbone.{a}": f"{prefix}.{k}.backbone.{b}" for a, b in tied.items()}
        )
    return out


def patch_size_of(config: PretrainedConfig) -> tuple[int, int] | None:
    p = getattr(config, "patch_size", None)
    if p is None:
        return None
    return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))


@torch.no_grad()
def describe(
    backbone: PreTrainedModel, layers: list[int], image_size: tuple[int, int], field: str
) -> dict:
    """Probe the backbone once to learn each selected layer's grid, width and prefix tokens."""
    from polyvis.errors import ConfigError

    config = backbone.config
    params = inspect.signature(backbone.forward).parameters
    cfg_size = getattr(config, "image_size", None)
    interpolate = cfg_size is not None and tuple(image_size) != (
        (cfg_size, cfg_size) if isinstance(cfg_size, int) else tuple(cfg_size)
    )
    kwargs = (
        {"interpolate_pos_encoding": True}
        if interpolate and "interpolate_pos_encoding" in params
        else {}
    )
    param = next(backbone.parameters())
    dummy = torch.zeros(
        1, getattr(config, "num_channels", 3), *image_size, dtype=param.dtype, device=param.device
    )
    was_training = backbone.training
    backbone.eval()
    hidden = backbone(
        pixel_values=dummy, output_hidden_states=True, return_dict=True, **kwargs
    ).hidden_states
    backbone.train(was_training)
    shapes = {tuple(hidden[i].shape[1:]) for i in layers}
    if len(shapes) != 1:
        raise ConfigError(
            field,
            f"selected layers have different shapes {sorted(shapes)}; pick layers of one stage",
        )
    shape = shapes.pop()
    if len(shape) == 3:  # (C, H, W)
        dim, grid, prefix = shape[0], (shape[1], shape[2]), 0
    else:
        n, dim = shape
        patch = patch_size_of(config)
        if patch is not None:
            grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        else:
            side = int(round(n**0.5))
            if side * side != n:
                raise ConfigError(
                    field, f"cannot tell the patch grid of {n} tokens (no patch_size in the config)"
                )
            grid = (side, side)
        prefix = n - grid[0] * grid[1]
        if prefix < 0:
            raise ConfigError(field, f"backbone gives {n} tokens, fewer than its {grid} patch grid")
    return {
        "layers": list(layers),
        "num_prefix_tokens": int(prefix),
        "grid": [int(grid[0]), int(grid[1])],
        "dim": int(dim),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "interpolate_pos_encoding": bool(kwargs),
    }


def mark_initialised(module: nn.Module) -> None:
    """Keep post_init from re-initialising weights that were loaded from a checkpoint."""
    for m in module.modules():
        m._is_hf_initialized = True
    for t in list(module.parameters()) + list(module.buffers()):
        t._is_hf_initialized = True
