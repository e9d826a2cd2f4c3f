"""A DETR-family object detector as a polyvis encoder: one token per object query.

The tokens are the decoder's last hidden state (B, Q, D), what the detector's own box and class
heads read (DETR, Conditional DETR, Deformable DETR, RT-DETR: any model that the Auto classes load
and whose config has `num_queries`). Object queries have no spatial grid, so only the fusions that
take plain sequences use them (`Fusion.positional` is False: concat-sequence, resampler).

With `embed_boxes`, the detector runs with its heads (AutoModelForObjectDetection) and each query
also carries its box [cx, cy, w, h] (normalised to the image) and its class probabilities. The
encoder returns them packed beside the hidden state, (B, Q, D + 4 + P), and the model's
`QueryBoxEmbedding` adds a learned linear embedding of them to the token. The embedding is a
projector parameter (trained in the align stage with the fusion and adapter) and starts at zero,
so an untrained model sees the plain query tokens; the packed output stays a frozen feature that
the feature cache can store while the embedding trains.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForObjectDetection,
    PretrainedConfig,
    PreTrainedModel,
)

from polyvis.errors import ConfigError

DETECTOR = "detector"
BOX_WIDTH = 4  # [cx, cy, w, h]


def is_detector(entry: dict[str, Any]) -> bool:
    """Whether an encoder entry of PolyVisConfig.encoders is a detector."""
    return entry.get("kind") == DETECTOR


def detector_auto_class(embed_boxes: bool) -> type:
    """With boxes the heads are needed; without them the bare model leaves no unused weights."""
    return AutoModelForObjectDetection if embed_boxes else AutoModel


def detector_from_config(config: PretrainedConfig | dict[str, Any], embed_boxes: bool) -> Any:
    """A randomly initialised detector for a config (a dict needs its `model_type`)."""
    if isinstance(config, dict):
        config = dict(config)
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    return detector_auto_class(embed_boxes).from_config(config)


def check_detector_config(config: PretrainedConfig, field: str) -> None:
    """Refuse a checkpoint that is not a DETR-family detector, naming the field."""
    if getattr(config, "num_queries", None) is None:
        raise ConfigError(
            field,
            f"kind: detector needs a DETR-family object detector (a config with num_queries), "
            f"got model_type {getattr(config, 'model_type', '?')!r}",
        )


def fixed_size_processor(proc: Any, field: str) -> Any:
    """Detection processors resize by shortest edge (800 for DETR), so sizes vary per image; polyvis
    packs every image at one size per encoder: resize to a square of the shortest edge instead
    (`image_size` in the encoder's config sets it)."""
    size = dict(getattr(proc, "size", None) or {})
    if "height" in size and "width" in size:
        side = None
    else:
        side = size.get("shortest_edge") or size.get("longest_edge")
        if side is None:
            raise ConfigError(f"{field}.image_size", f"needed: the processor's size is {size}")
        proc.size = {"height": int(side), "width": int(side)}
    if getattr(proc, "do_pad", False):
        proc.do_pad = False  # one size for every image: nothing to pad, no pixel mask
    return proc


@torch.no_grad()
def describe_detector(
    backbone: PreTrainedModel, image_size: tuple[int, int], embed_boxes: bool, field: str
) -> dict[str, Any]:
    """Probe the detector once: queries, width and (with boxes) the packed extra channels."""
    config = backbone.config
    param = next(backbone.parameters())
    dummy = torch.zeros(1, 3, *image_size, dtype=param.dtype, device=param.device)
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(pixel_values=dummy, return_dict=True)
    except TypeError as err:  # a detector that needs more than pixels (Grounding DINO: text)
        raise ConfigError(
            field,
            f"detector forward on pixel_values alone failed ({str(err).splitlines()[0]}): "
            "detectors prompted by text or other inputs are not supported",
        ) from None
    except (RuntimeError, ValueError) as err:
        raise ConfigError(field, f"detector forward failed: {str(err).splitlines()[0]}") from None
    finally:
        backbone.train(was_training)
    hidden = out.last_hidden_state
    queries, dim = int(hidden.shape[1]), int(hidden.shape[2])
    entry: dict[str, Any] = {
        "kind": DETECTOR,
        # the decoder's last layer (an absolute index like a vision encoder's layers)
        "layers": [int(getattr(config, "decoder_layers", 1))],
        "num_prefix_tokens": 0,
        "grid": [1, queries],
        "dim": dim,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "interpolate_pos_encoding": False,
        "embed_boxes": bool(embed_boxes),
    }
    if embed_boxes:
        logits = getattr(out, "logits", None)
        if logits is None or getattr(out, "pred_boxes", None) is None:
            raise ConfigError(
                f"{field}.embed_boxes", f"{type(backbone).__name__} gives no boxes and class logits"
            )
        num_labels = int(getattr(config, "num_labels", logits.shape[-1]))
        entry["box_features"] = BOX_WIDTH + int(logits.shape[-1])
        entry["class_scores"] = "softmax" if logits.shape[-1] == num_labels + 1 else "sigmoid"
    return entry


class DetectorEncoder(nn.Module):
    """A detector read as an encoder: forward gives one (B, Q, D) tensor, the decoder's last hidden
    state; with `embed_boxes`, (B, Q, D + 4 + P): hidden state, box [cx, cy, w, h], class
    probabilities (QueryBoxEmbedding turns that into (B, Q, D)).

    Same attributes as VisionEncoder: name, layers, grid (1, Q), dim, image_size.
    """

    def __init__(self, backbone: PreTrainedModel, entry: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.name = entry["name"]
        self.layers = list(entry["layers"])
        self.num_prefix_tokens = 0
        self.grid = tuple(entry["grid"])
        self.dim = int(entry["dim"])
        self.image_size = tuple(entry["image_size"])
        self.embed_boxes = bool(entry.get("embed_boxes"))
        self.class_scores = entry.get("class_scores", "softmax")

    @property
    def num_layers(self) -> int:
        return 1

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        param = next(self.backbone.parameters())
        out = self.backbone(pixel_values=pixel_values.to(param.dtype), return_dict=True)
        hidden = out.last_hidden_state
        if not self.embed_boxes:
            return [hidden]
        logits = out.logits
        probs = logits.softmax(-1) if self.class_scores == "softmax" else logits.sigmoid()
        return [torch.cat([hidden, out.pred_boxes.to(hidden.dtype), probs.to(hidden.dtype)], -1)]


class QueryBoxEmbedding(nn.Module):
    """token = hidden + W [box, class probabilities] + b, on a detector's packed output.

    W and b start at zero (PolyVisPreTrainedModel._init_weights), so the model starts from the
    plain query tokens and learns how much the boxes and classes add. They are the module's own
    parameters, not an nn.Linear's: transformers' init reaches only modules that hold parameters.
    """

    def __init__(self, dim: int, extra: int):
        super().__init__()
        self.dim = int(dim)
        self.weight = nn.Parameter(torch.zeros(self.dim, int(extra)))
        self.bias = nn.Parameter(torch.zeros(self.dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        hidden, extra = packed[..., : self.dim], packed[..., self.dim :]
        return hidden + F.linear(extra, self.weight.to(extra.dtype), self.bias.to(extra.dtype))


def query_embeddings(entries: list[dict[str, Any]]) -> nn.ModuleDict:
    """One QueryBoxEmbedding per detector with `embed_boxes`, keyed by encoder index (empty for
    models without one, whose parameters stay as they were)."""
    return nn.ModuleDict(
        {
            str(k): QueryBoxEmbedding(int(e["dim"]), int(e["box_features"]))
            for k, e in enumerate(entries)
            if is_detector(e) and e.get("embed_boxes")
        }
    )


def embed_queries(
    embeddings: nn.ModuleDict, feats: list[list[torch.Tensor]]
) -> list[list[torch.Tensor]]:
    """Each packed detector output through its embedding; other encoders' features as they are."""
    if not len(embeddings):
        return feats
    return [
        [embeddings[str(k)](x) for x in layers] if str(k) in embeddings else layers
        for k, layers in enumerate(feats)
    ]
