"""Attention in float32 while the rest of a CPU training step autocasts to bfloat16.

On a CPU with AVX512-BF16, bf16 matmuls are faster than fp32 ones, but torch's bf16 SDPA
kernels are slower than its fp32 ones (docs/performance.md, "bf16 on the CPU"). So
`train.mixed_precision: bf16` on a CPU runs attention in fp32: the registered implementation
`sdpa_fp32` is transformers' SDPA with q, k and v upcast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

FP32_SDPA = "sdpa_fp32"
SDPA_NAMES = ("sdpa", FP32_SDPA)


def _upcast(*xs: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [x.float() if x is not None and x.is_floating_point() else x for x in xs]


def sdpa_fp32_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention with autocast off and its inputs in float32; the output
    comes back in the query's dtype, so the next projection autocasts as before."""
    dtype = query.dtype
    q, k, v, mask = _upcast(query, key, value, attention_mask)
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    return out.to(dtype), weights


def scaled_dot_product(
    config: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """F.scaled_dot_product_attention as `config`'s attention implementation runs it: for
    sdpa_fp32 with autocast off and in float32, the output in q's dtype."""
    if config._attn_implementation != FP32_SDPA:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q, k, v, **kwargs).to(dtype)


AttentionInterface.register(FP32_SDPA, sdpa_fp32_forward)
# the masks SDPA takes (without this, transformers builds no padding mask for an unknown name)
ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_SDPA, sdpa_mask)


def use_fp32_attention(model: torch.nn.Module) -> int:
    """Switch every sub-model that uses SDPA (the LM, the vision encoders) to `sdpa_fp32`; the
    setting is not saved with the model. Returns how many configs were switched."""
    switched = 0
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = FP32_SDPA
            switched += 1
    return switched
