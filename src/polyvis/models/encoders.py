"""Any transformers vision backbone as a polyvis encoder.

An encoder returns the hidden states of its selected layers as token sequences (B, N, D), with the
class and register tokens dropped by what the backbone actually produces (N minus the patch grid),
not by habit. Layers above the deepest selected one are removed, so they are never computed (the
first block stays even for layers [0]: it is what reports the embedding output).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
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
    if getattr(backbone.config, "mask_ratio", None):
        # MAE encoders drop mask_ratio of the patches at random: an encoder keeps them all
        backbone.config.mask_ratio = 0.0
    total = num_hidden_layers(backbone.config)
    if getattr(backbone.config, "depths", None) is not None:
        # stages (Swin): a kept stage's downsampling depends on the stage count in the config,
        # so a truncated model could not be rebuilt from its config; keep every stage
        total = None
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
                setattr(parent, name, _Head())
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


class _Head(nn.Identity):
    """Identity in a head's place that also takes the head's extra inputs (SigLIP2's calls its
    head with the patch mask)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


def forward_params(backbone: nn.Module) -> frozenset[str]:
    """The names the backbone's forward takes; `noise` only where it shuffles patches (MAE)."""
    params = set(inspect.signature(backbone.forward).parameters)
    emb = getattr(backbone, "embeddings", None)
    if not (hasattr(emb, "random_masking") and getattr(emb, "is_mae", True)):
        params.discard("noise")  # Hiera takes noise too, but masks only when pretraining
    return frozenset(params)


def patchify(pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C) patches, row by row, channels last within a patch: the
    layout of SigLIP2's (NaFlex) image processor."""
    b, c, height, width = pixel_values.shape
    h, w = height // patch, width // patch
    x = pixel_values[:, :, : h * patch, : w * patch].reshape(b, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, patch * patch * c)


def run_backbone(
    backbone: nn.Module, pixel_values: torch.Tensor, params: frozenset[str], **kwargs: Any
) -> Any:
    """The backbone's output with every hidden state, for (B, 3, H, W) pixels. Two families
    take other inputs: SigLIP2 (NaFlex) reads patches with their grid and a mask (here every
    patch of a fixed-size image), MAE keeps its patches in random order unless given noise
    (increasing noise keeps them in place)."""
    if "spatial_shapes" in params:
        patch = int(backbone.config.patch_size)
        b, _, height, width = pixel_values.shape
        x = patchify(pixel_values, patch)
        kwargs["spatial_shapes"] = torch.tensor(
            [[height // patch, width // patch]] * b, device=x.device
        )
        kwargs["pixel_attention_mask"] = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        pixel_values = x
    elif "noise" in params:
        ph, pw = patch_size_of(backbone.config) or (1, 1)
        n = (pixel_values.shape[-2] // ph) * (pixel_values.shape[-1] // pw)
        kwargs["noise"] = torch.arange(n, device=pixel_values.device).expand(len(pixel_values), n)
    return backbone(
        pixel_values=pixel_values, output_hidden_states=True, return_dict=True, **kwargs
    )


def hidden_states_of(out: Any, feature_maps: str | None) -> tuple[torch.Tensor, ...]:
    """The hidden states polyvis reads: `hidden_states`, or for hierarchical transformers
    (Swin, FocalNet, Hiera) their `reshaped_hidden_states` as (B, C, H, W) maps, since their
    token sequences hold no patch grid (and Hiera's are not in raster order)."""
    if feature_maps is None:
        return out.hidden_states
    if feature_maps == "channels_last":
        return tuple(h.permute(0, 3, 1, 2) for h in out.reshaped_hidden_states)
    return out.reshaped_hidden_states


def feature_map_layout(out: Any, layers: list[int]) -> str | None:
    """None to read `hidden_states`; else the layout of `reshaped_hidden_states`, found by which
    one holds the same tokens per channel as the sequence (the layouts are ambiguous by shape
    alone when C == H == W)."""
    maps = getattr(out, "reshaped_hidden_states", None)
    if not maps or any(out.hidden_states[i].dim() != 3 for i in layers):
        return None
    seq, grid = out.hidden_states[layers[0]], maps[layers[0]]
    sums = seq.float().sum(1)
    for layout, dims in (("channels_first", (2, 3)), ("channels_last", (1, 2))):
        if grid.dim() != 4 or grid.shape[dims[0]] * grid.shape[dims[1]] != seq.shape[1]:
            continue
        per_channel = grid.float().sum(dims)
        if per_channel.shape == sums.shape and torch.allclose(per_channel, sums, 1e-3, 1e-3):
            return layout
    return None


class VisionEncoder(nn.Module):
    """A vision backbone plus the recipe for reading its features.

    entry: the encoder's record in PolyVisConfig.encoders: name, layers (absolute indices),
    num_prefix_tokens, grid, dim, image_size, interpolate_pos_encoding, and feature_maps only
    where the backbone's grid is read from its reshaped hidden states.
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
        self.feature_maps = entry.get("feature_maps")
        self._params = forward_params(backbone)
        self._extra_kwargs = (
            {"interpolate_pos_encoding": True}
            if entry.get("interpolate_pos_encoding") and "interpolate_pos_encoding" in self._params
            else {}
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (B, 3, H, W) -> one (B, N, D) tensor per selected layer."""
        param = next(self.backbone.parameters())
        out = run_backbone(
            self.backbone, pixel_values.to(param.dtype), self._params, **self._extra_kwargs
        )
        hidden = hidden_states_of(out, self.feature_maps)
        feats = []
        for idx in self.layers:
            h = hidden[idx]
            if h.dim() == 4:  # convolutional backbones give (B, C, H, W) maps
                h = h.flatten(2).transpose(1, 2)
            feats.append(h[:, self.num_prefix_tokens :])
        return feats


@contextmanager
def eval_if(frozen: bool, module: nn.Module) -> Iterator[None]:
    """A frozen encoder runs as inference sees it, also while the model trains: no dropout, and
    BatchNorm (ResNet, ConvNeXt-style stems, detectors) neither uses batch statistics nor moves
    its running ones, which would change the "frozen" weights and disagree with the feature
    cache (computed in eval mode)."""
    if not (frozen and module.training):
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train()


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


def mark_initialised(module: nn.Module) -> None:
    """Keep post_init from re-initialising weights that were loaded from a checkpoint."""
    for m in module.modules():
        m._is_hf_initialized = True
    for t in list(module.parameters()) + list(module.buffers()):
        t._is_hf_initialized = True
