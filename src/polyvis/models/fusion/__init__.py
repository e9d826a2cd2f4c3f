"""Fusion methods: how the features of several encoders become one token sequence.

Every method is registered under an exact key in `FUSIONS`; `build_fusion` validates the options.
"""

from __future__ import annotations

from typing import Any

# Importing the modules registers their methods.
from polyvis.models.fusion import (  # noqa: F401
    add,
    concat_channel,
    concat_sequence,
    gated,
    interleave,
    mul,
    omnifusion,
    resampler,
    sva,
)
from polyvis.models.fusion.base import FUSIONS, EncoderInfo, Fusion, FusionParams
from polyvis.options import resolve_typed

__all__ = ["FUSIONS", "EncoderInfo", "Fusion", "FusionParams", "build_fusion"]


def build_fusion(
    cfg: dict[str, Any], encoders: list[EncoderInfo], field: str = "model.fusion"
) -> Fusion:
    """Build the fusion named by cfg['type'] for these encoders; errors name `field`."""
    cls, params = resolve_typed(FUSIONS, cfg, field)
    return cls(encoders, params)
