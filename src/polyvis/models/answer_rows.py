"""Training's answer-only LM forward, with the last decoder layer run on the answer rows alone.

Training reads the LM only at the positions that predict an answer token: a few percent of a
batch, since the image and prompt positions predict nothing. Every layer below the last must
still run on every position (its output is the next layer's keys and values), but the last
layer's queries, attention, output projection and MLP, the final norm and the LM head are only
needed at those rows. `answer_logits` runs the last layer that way for the decoders whose layer
it knows (`supported`: Qwen2 and Llama, full attention, SDPA); other LMs keep their own forward.

A right-padded batch also goes without a padding mask: under the causal mask alone a real
position only sees real positions, and the padding, after every answer, reaches nothing the loss
reads. SDPA then takes its causal, grouped-query path.

The logits equal the full forward's (tests/test_model.py). The gradients agree up to rounding:
the weight gradients sum over fewer rows, and grouped-query attention sums its heads inside the
kernel, so training follows the full forward's trajectory only to float precision.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.masking_utils import create_causal_mask

from polyvis.models.attention import SDPA_NAMES, scaled_dot_product

_LAYERS = ("Qwen2DecoderLayer", "LlamaDecoderLayer")


def supported(lm: Any) -> bool:
    """Whether `answer_logits` knows this causal LM (peft-wrapped or sharded layers keep the
    LM's own forward)."""
    base = getattr(lm, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(lm, PreTrainedModel) or not layers or not hasattr(lm, "lm_head"):
        return False
    config = lm.config
    types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        type(layers[-1]).__name__ in _LAYERS
        and config._attn_implementation in SDPA_NAMES
        and all(t == "full_attention" for t in types)
        and not (lm.training and getattr(config, "attention_dropout", 0.0))
    )


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is its tokens, then only padding (or no padding at all)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def answer_logits(
    lm: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor
) -> torch.Tensor:
    """Logits (n, vocab) at the positions where `keep` (batch, length) is True, in row order:
    what `lm(inputs_embeds=..., logits_to_keep=keep).logits` gives."""
    base = lm.model
    batch, length, _ = inputs_embeds.shape
    device = inputs_embeds.device
    position_ids = torch.arange(length, device=device)[None]
    mask = None
    if attention_mask is not None and not right_padded(attention_mask):
        mask = create_causal_mask(
            config=base.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=None,
            position_ids=position_ids,
        )
    cos, sin = base.rotary_emb(inputs_embeds, position_ids)
    layers = base.layers[: base.config.num_hidden_layers]
    hidden = inputs_embeds
    for layer in layers[:-1]:
        hidden = layer(
            hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=(cos, sin)
        )

    last = layers[-1]
    attn = last.self_attn
    # Each row's answer positions first, in order; a row with fewer fills its slots with
    # position 0, whose results are dropped at the end.
    counts = keep.sum(1)
    width = int(counts.max())
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
    used = torch.arange(width, device=device)[None] < counts[:, None]
    pos = torch.where(used, order, 0)
    rows = torch.arange(batch, device=device)[:, None]

    normed = last.input_layernorm(hidden)
    dim = attn.head_dim
    q = attn.q_proj(normed[rows, pos]).view(batch, width, -1, dim).transpose(1, 2)
    k = attn.k_proj(normed).view(batch, length, -1, dim).transpose(1, 2)
    v = attn.v_proj(normed).view(batch, length, -1, dim).transpose(1, 2)
    # rotary embedding as the layer applies it: x * cos + rotate_half(x) * sin
    cos_q, sin_q = cos[0][pos].unsqueeze(1), sin[0][pos].unsqueeze(1)
    q = q * cos_q + _rotate_half(q) * sin_q
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    groups = attn.num_key_value_groups
    k = k.repeat_interleave(groups, dim=1) if groups > 1 else k
    v = v.repeat_interleave(groups, dim=1) if groups > 1 else v
    allowed = torch.arange(length, device=device)[None, None] <= pos[:, :, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None]
    out = scaled_dot_product(attn.config, q, k, v, attn_mask=allowed[:, None], scale=attn.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(batch, width, -1))
    hidden = hidden[rows, pos] + out
    hidden = hidden + last.mlp(last.post_attention_layernorm(hidden))
    return lm.lm_head(base.norm(hidden[used]))


def causal_loss(lm: PreTrainedModel) -> Any:
    """The LM's loss function for the answer-only loss; the causal-LM one where transformers
    cannot tell it from the class name (GPT2LMHeadModel), which it would pick anyway, after a
    `loss_type=None` warning."""
    if getattr(lm, "_loss_function", None) is None and getattr(lm, "loss_type", None) is None:
        return LOSS_MAPPING["ForCausalLM"]
    return lm.loss_function
