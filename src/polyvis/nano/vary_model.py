"""vary-nano's model: a vision encoder, a projector into a small causal decoder, and the CTC head.

The encoder's last-layer patch tokens are projected (optionally LayerNorm, then Linear) and put in
front of the transcript's tokens as the decoder's `inputs_embeds`; the CTC head reads the same
patch tokens (per grid column, rows pooled by a learned attention, or every patch in raster
order: polyvis.nano.vary_loss).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from polyvis.errors import ConfigError
from polyvis.models.load_checks import probe_lm
from polyvis.nano._common import ExpertSettings, square_processor

# The default encoder: a small ResNet (stem /4, a 64-channel stage, a 128-channel stage /2), an
# 8x8 grid of 128-d tokens at 64 px. A convolutional stem learns glyphs from scratch far faster
# than a ViT of the same size (docs/nano.md).
RESNET_NANO = {"model_type": "resnet", "embedding_size": 32, "hidden_sizes": [64, 128], "depths": [1, 2],
               "layer_type": "basic", "downsample_in_first_stage": False}  # fmt: skip
DECODER_NANO = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512, "tie_word_embeddings": True}  # fmt: skip


class VarySettings(ExpertSettings):
    """Everything that decides a vary-nano encoder (the experts cache hashes these)."""

    families: list[str] = Field(default_factory=lambda: ["ocr", "latex", "table", "chart"])
    init: str | None = None  # a checkpoint dir (CLIP: its vision tower) ...
    encoder: dict[str, Any] | None = None  # ... or a vision config (default RESNET_NANO)
    decoder: dict[str, Any] = Field(default_factory=lambda: dict(DECODER_NANO))
    tokenizer: Literal["chars", "bpe"] = "chars"
    bpe_vocab_size: int = Field(default=512, gt=260)
    size: int = Field(default=64, ge=16)
    steps: int = Field(default=450, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.05, ge=0, lt=1)
    max_target_len: int = Field(default=64, gt=0)
    aux_ctc: float = Field(default=1.0, ge=0)  # weight of the auxiliary CTC loss (0 = off)
    aux_families: list[str] = Field(default_factory=lambda: ["ocr"])
    # LayerNorm before the projector's linear map; without it the projector is one linear map,
    # which a polyvis `linear` adapter can start from (OUT/decoder/projector.safetensors)
    projector_norm: bool = True
    eval_samples: int = Field(default=200, ge=0)  # held-out images per family decoded at the end
    seed: int = 0
    threads: int = Field(default=1, ge=1)


class VaryNano(nn.Module):
    """Encoder + projector + causal decoder, plus the auxiliary CTC head (per column, or per
    patch in raster order for tables)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        entry: dict[str, Any],
        ctc_classes: int,
        projector_norm: bool = True,
    ):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.prefix = entry["num_prefix_tokens"]
        self.grid = tuple(entry["grid"])
        self.kwargs = (
            {"interpolate_pos_encoding": True} if entry["interpolate_pos_encoding"] else {}
        )
        dim, width = entry["dim"], decoder.config.hidden_size
        norm = [nn.LayerNorm(dim)] if projector_norm else []
        self.proj = nn.Sequential(*norm, nn.Linear(dim, width))
        self.col_score = nn.Linear(dim, 1)
        self.col_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ctc_classes))

    def patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The last layer's patch tokens (B, N, D): what polyvis reads with layers [-1]."""
        out = self.encoder(pixel_values=pixel_values, output_hidden_states=True, **self.kwargs)
        h = out.hidden_states[-1]
        if h.dim() == 4:  # convolutional backbones
            h = h.flatten(2).transpose(1, 2)
        return h[:, self.prefix :]

    def column_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, columns, classes): rows pooled by a learned attention per column."""
        b, _, d = patches.shape
        grid = patches.reshape(b, self.grid[0], self.grid[1], d)
        weights = self.col_score(grid).softmax(dim=1)
        return self.col_head((weights * grid).sum(dim=1))

    def decoder_inputs(self, patches: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        embed = self.decoder.get_input_embeddings()
        return torch.cat([self.proj(patches), embed(ids)], dim=1)


def build_vary(settings: VarySettings, vocab_size: int, ctc_classes: int) -> tuple[VaryNano, Any]:
    """The encoder (from init or config), a decoder for `vocab_size`, and the image processor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from polyvis.config import EncoderSpec
    from polyvis.models.build import load_vision_backbone, make_image_processor
    from polyvis.models.encoder_probe import describe

    if settings.init is not None and settings.encoder is not None:
        raise ConfigError(
            "encoder", "give either init (a checkpoint) or encoder (a config), not both"
        )
    if settings.init is not None:
        spec = EncoderSpec(name="vary-nano", path=settings.init, image_size=settings.size)
    else:
        cfg = dict(settings.encoder or RESNET_NANO)
        cfg["image_size"] = settings.size
        spec = EncoderSpec(name="vary-nano", config=cfg, image_size=settings.size)
    encoder = load_vision_backbone(spec, "encoder", torch.float32)
    if spec.config is not None:
        processor = _plain_processor(settings.size)
    else:  # a checkpoint keeps its own normalisation
        processor = make_image_processor(spec, encoder.config, "encoder")
    # The last hidden state, as patches() reads it (num_hidden_layers means blocks for a ViT but
    # stages, or nothing, for convolutional backbones).
    entry = describe(encoder, [-1], (settings.size, settings.size), "encoder")
    dcfg = dict(settings.decoder)
    if "model_type" not in dcfg:  # a whole causal-LM config, not changes to the default one
        raise ConfigError(
            "decoder",
            f"needs model_type (a whole causal-LM config; the default is {DECODER_NANO})",
        )
    dcfg.update(vocab_size=vocab_size, pad_token_id=0)
    try:
        decoder = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(dcfg.pop("model_type"), **dcfg)
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError("decoder", str(err).splitlines()[0]) from None
    probe_lm(decoder, "decoder")  # random state untouched: the expert's bytes stay the same
    return VaryNano(encoder, decoder, entry, ctc_classes, settings.projector_norm), processor


def _plain_processor(size: int) -> Any:
    """Resize to size x size, scale to [-1, 1]: what a document encoder trained here expects."""
    return square_processor(size, [0.5] * 3, [0.5] * 3)
