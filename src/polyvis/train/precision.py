"""Mixed precision around accelerate: a fresh AcceleratorState per run, and attention in fp32
for bf16 on a CPU (polyvis.models.attention)."""

from __future__ import annotations

from typing import Any


def allow_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses another mixed_precision
    once it exists, so a second run in the same process (a notebook, the tests) with another
    precision resets it first. The distributed state (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


def cpu_bf16_attention(accelerator: Any, model: Any) -> None:
    """Under bf16 autocast on a CPU, attention in fp32: its bf16 kernels are slower there."""
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        from polyvis.models.attention import use_fp32_attention

        use_fp32_attention(model)
