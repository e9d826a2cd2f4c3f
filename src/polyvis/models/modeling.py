"""PolyVisForConditionalGeneration: encoders -> fusion -> adapter -> causal LM (its config:
polyvis.models.configuration.PolyVisConfig).

One transformers model: `save_pretrained` writes a single directory (safetensors) holding the
encoders, fusion, adapter and LM; `from_pretrained` rebuilds it offline from config.json alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from polyvis.errors import DataError
from polyvis.models import answer_rows
from polyvis.models.adapters import build_adapter
from polyvis.models.configuration import PolyVisConfig
from polyvis.models.detector import QueryBoxEmbedding, embed_queries, is_detector, query_embeddings
from polyvis.models.encoders import (
    backbone_tied_weights,
    eval_if,
    make_encoder,
    mark_initialised,
)
from polyvis.models.fusion import EncoderInfo, build_fusion
from polyvis.models.processing import PolyVisProcessor
from polyvis.models.tiling import encode_views, find_tiling, fuse_tiled, views_of


class PolyVisPreTrainedModel(PreTrainedModel):
    config_class = PolyVisConfig
    config: PolyVisConfig
    base_model_prefix = "polyvis"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, PolyVisForConditionalGeneration):
            nn.init.normal_(module.image_boundary_embeds, std=0.02)
            return
        if isinstance(module, QueryBoxEmbedding):  # starts at zero: the plain query tokens
            module.reset_parameters()
            return
        super()._init_weights(module)


class PolyVisForConditionalGeneration(PolyVisPreTrainedModel, GenerationMixin):
    """Frozen-or-not encoders, a fusion method, an adapter and any causal LM, as one model.

    forward(input_ids, pixel_values, ...): pixel_values is (num_images, S, 3, H, W), one slot per
    encoder (a tiled encoder has one per view, NaN where an image has none: models/tiling.py),
    each image resized for that encoder and zero-padded to the largest size (a single tensor, so
    generate() can expand it for beams like any other input). Images are spliced in order into
    the `<image>` placeholders of the batch.

    answer_rows_forward: with `answer_logits_only`, run the LM's last layer on the answer rows alone
    where models/answer_rows.py knows the LM (the same logits; gradients equal up to rounding).
    False keeps the LM's own forward on every position.
    """

    answer_rows_forward: bool = True

    def __init__(
        self,
        config: PolyVisConfig,
        language_model: PreTrainedModel | None = None,
        backbones: list[PreTrainedModel] | None = None,
    ):
        super().__init__(config)
        if not config.encoders:
            raise ValueError(
                "PolyVisConfig.encoders is empty: build models with polyvis.build_model"
            )
        encoders = []
        for k, entry in enumerate(config.encoders):
            backbone = backbones[k] if backbones is not None else None
            if backbone is not None:
                mark_initialised(backbone)
            encoders.append(make_encoder(entry, backbone))
        self.encoders = nn.ModuleList(encoders)
        infos = [
            EncoderInfo(
                e["name"],
                int(e["dim"]),
                tuple(e["grid"]),
                len(e["layers"]),
                views_of(e),
                spatial=not is_detector(e),
            )
            for e in config.encoders
        ]
        self.tiling = find_tiling(config.encoders)  # (encoder index, Tiling) or None
        counts = [views_of(e) for e in config.encoders]
        self.slot_starts = [sum(counts[:k]) for k in range(len(counts))]
        self.num_slots = sum(counts)
        self.fusion = build_fusion(config.fusion, infos)
        text_config = config.text_config
        self.adapter = build_adapter(
            config.adapter,
            self.fusion.out_dim,
            text_config.hidden_size,
            self.fusion.grid,
            self.fusion.num_tokens,
        )
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(text_config)
        else:
            mark_initialised(language_model)
        self.language_model = language_model
        # `<img_start>` and `<img_end>` own their embeddings, so they can learn while the LM is frozen.
        self.image_boundary_embeds = nn.Parameter(torch.zeros(2, text_config.hidden_size))
        # detectors' box embeddings (models/detector.py): projector parameters, made last and
        # only for detectors with embed_boxes, so other models keep their parameters and init
        self.query_embeds = query_embeddings(config.encoders)
        self.post_init()
        # post_init gathers only its direct children's tied weights
        self.all_tied_weights_keys.update(backbone_tied_weights(self.encoders, "encoders"))

    # -- transformers plumbing ------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # -- image features --------------------------------------------------------------------------
    @property
    def image_seq_length(self) -> int:
        return self.adapter.num_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> list[list[torch.Tensor]]:
        """(n, S, 3, H, W) -> per encoder, its selected layers' features (n, N_k, D_k); a tiled
        encoder's are (n, views, N_k, D_k), NaN in the views an image does not use."""
        if pixel_values.dim() == 4 and self.num_slots == 1:
            pixel_values = pixel_values[:, None]
        if pixel_values.dim() != 5 or pixel_values.shape[1] != self.num_slots:
            raise DataError(
                f"pixel_values must be (num_images, {self.num_slots}, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        feats = []
        for k, enc in enumerate(self.encoders):
            frozen = not any(p.requires_grad for p in enc.parameters())
            with (
                torch.set_grad_enabled(torch.is_grad_enabled() and not frozen),
                eval_if(frozen, enc),
            ):
                feats.append(self.encode_with(k, pixel_values))
        return feats

    def encode_with(self, k: int, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Encoder k on its slot(s) of (n, S, 3, H, W) pixel_values: its layers' features."""
        enc = self.encoders[k]
        h, w = enc.image_size
        start = self.slot_starts[k]
        if self.tiling is None or self.tiling[0] != k:
            return enc(pixel_values[:, start, :, :h, :w])
        views = self.tiling[1].views
        return encode_views(enc, pixel_values[:, start : start + views, :, :h, :w])

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        encoder_features: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Visual tokens in the LM's embedding space, (num_images, image_seq_length, D_llm); with
        a tiled encoder, (units, image_seq_length, D_llm): each image's units one after the other
        (docs/tiling.md), which is what the `<image>` placeholders hold in the same order.

        encoder_features: precomputed encoder outputs (the feature cache), instead of pixels.
        """
        feats = (
            encoder_features if encoder_features is not None else self.encode_images(pixel_values)
        )
        feats = embed_queries(self.query_embeds, feats)
        if self.tiling is None:
            return self.adapter(self.fusion(feats))
        k, tiling = self.tiling
        return self.adapter(fuse_tiled(self.fusion, feats, k, tiling))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """LM embeddings, with `<img_start>` / `<img_end>` taken from their own parameters."""
        cfg = self.config
        embed = self.get_input_embeddings()
        is_start = input_ids == cfg.image_start_token_id
        is_end = input_ids == cfg.image_end_token_id
        is_image = input_ids == cfg.image_token_id
        # These ids may lie past the LM's vocabulary (tokens added to the tokenizer).
        safe_ids = input_ids.masked_fill(is_start | is_end | is_image, 0)
        embeds = embed(safe_ids)
        boundary = self.image_boundary_embeds.to(embeds.dtype)
        embeds = torch.where(is_start[..., None], boundary[0], embeds)
        embeds = torch.where(is_end[..., None], boundary[1], embeds)
        return embeds

    def splice_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Put the visual tokens into the `<image>` placeholders, in order (vectorised)."""
        mask = input_ids == self.config.image_token_id
        n_placeholders = int(mask.sum())
        n_features = image_features.shape[0] * image_features.shape[1]
        if n_placeholders != n_features:
            raise DataError(
                f"image placeholder count mismatch: input_ids hold {n_placeholders} <image> tokens but "
                f"{image_features.shape[0]} image(s) x {image_features.shape[1]} tokens = {n_features} features"
            )
        return inputs_embeds.masked_scatter(mask[..., None], image_features.to(inputs_embeds.dtype))

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_features: list[list[torch.Tensor]] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        answer_logits_only: bool = False,
        **kwargs: Any,
    ):
        """Causal-LM forward; loss (when labels are given) only where labels != -100.

        answer_logits_only: with labels, project only the positions that predict an answer
        token onto the vocabulary (the same loss; `logits` then holds just those rows, flat).
        Training uses it: with a large vocabulary the LM head over every image and prompt
        position is a big share of a step's compute and memory.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)
            has_images = pixel_values is not None or encoder_features is not None
            if has_images:
                features = self.get_image_features(pixel_values, encoder_features)
                inputs_embeds = self.splice_image_features(input_ids, inputs_embeds, features)
            elif bool((input_ids == self.config.image_token_id).any()):
                raise DataError(
                    "input_ids hold <image> placeholders but no pixel_values were given"
                )
        if answer_logits_only and labels is not None and isinstance(logits_to_keep, int):
            return self._answer_only_forward(
                inputs_embeds, attention_mask, position_ids, labels, **kwargs
            )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _answer_only_forward(self, inputs_embeds, attention_mask, position_ids, labels, **kwargs):
        # Position t predicts token t + 1: keep the positions whose next label is an answer token.
        targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        keep = targets != -100
        num_items = kwargs.pop("num_items_in_batch", None)
        kwargs.setdefault("use_cache", False)
        lm = self.language_model
        fast = self.answer_rows_forward and position_ids is None and kwargs == {"use_cache": False}
        if fast and bool(keep.any()) and answer_rows.supported(lm):
            logits = answer_rows.answer_logits(lm, inputs_embeds, attention_mask, keep)
            out = CausalLMOutputWithPast(logits=logits)
        else:
            out = lm(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=keep,
                **kwargs,
            )
        out.loss = answer_rows.causal_loss(lm)(
            logits=out.logits,
            labels=None,
            shift_labels=targets[keep],
            vocab_size=out.logits.shape[-1],
            num_items_in_batch=num_items,
        )
        return out

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs
    ):
        """Repeat each prompt's images as a group for beams / num_return_sequences.

        The default repeats pixel_values image by image, which pairs the beams of a two-image
        prompt with [a, a] and [b, b] instead of [a, b] twice.
        """
        pixel_values = model_kwargs.pop("pixel_values", None)
        input_ids_out, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if pixel_values is not None and expand_size > 1:
            if input_ids is None:
                raise ValueError("generate() with images and several beams needs input_ids")
            per_prompt = (input_ids == self.config.image_start_token_id).sum(1)
            first = torch.cumsum(per_prompt, 0) - per_prompt  # index of each prompt's first image
            counts = per_prompt.repeat_interleave(expand_size)  # images per expanded row
            row = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
            offset = (
                torch.arange(int(counts.sum()), device=counts.device)
                - (torch.cumsum(counts, 0) - counts)[row]
            )
            order = first.repeat_interleave(expand_size)[row] + offset
            pixel_values = pixel_values[order.to(pixel_values.device)]
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids_out, model_kwargs

    # -- training helpers ------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role: encoders, projector (fusion + adapter + boundary tokens), llm."""
        return {
            "encoders": list(self.encoders.parameters()),
            "projector": list(self.fusion.parameters())
            + list(self.adapter.parameters())
            + list(self.query_embeds.parameters())
            + [self.image_boundary_embeds],
            "llm": list(self.language_model.parameters()),
        }

    def set_trainable(
        self, encoders: bool = False, projector: bool = True, llm: bool = False
    ) -> None:
        """Freeze or unfreeze by role (align stage: projector only; finetune: + llm)."""
        flags = {"encoders": encoders, "projector": projector, "llm": llm}
        for role, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(flags[role])


# transformers' documented way for models outside the library: after this module is imported,
# AutoConfig / AutoModelForImageTextToText / AutoProcessor load a polyvis model directory.
AutoConfig.register("polyvis", PolyVisConfig, exist_ok=True)
AutoModelForImageTextToText.register(PolyVisConfig, PolyVisForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PolyVisConfig, PolyVisProcessor, exist_ok=True)
