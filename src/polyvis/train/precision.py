"""Mixed precision around accelerate: a fresh AcceleratorState per run, and attention in fp32
for bf16 on a CPU (polyvis.models.attention)."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def allow_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses another mixed_precision
    once it exists, so a second run in the same process (a notebook, the tests) with another
    precision resets it first. The distributed state (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX, as oneDNN sees it).
    Without, bf16 matmuls are emulated and slower than fp32 ones."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def warn_slow_cpu_bf16(what: str) -> bool:
    """Log once per setting (`what`) that bf16 will be slower than fp32 on this CPU; True if so."""
    if cpu_has_native_bf16():
        return False
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "%s=bf16: this CPU has no native bf16 matrix multiply (torch kernels %s; AVX512-BF16 "
            "or AMX needed), so bf16 runs slower than fp32 here",
            what,
            torch.backends.cpu.get_cpu_capability(),
        )
    return True


def cpu_bf16_attention(accelerator: Any, model: Any) -> None:
    """Under bf16 autocast on a CPU, attention in fp32: its bf16 kernels are slower there."""
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        from polyvis.models.attention import use_fp32_attention

        warn_slow_cpu_bf16("train.mixed_precision")
        use_fp32_attention(model)
