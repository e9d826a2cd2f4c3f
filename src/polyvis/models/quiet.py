"""quiet_transformers: transformers' warnings and progress bars off for a block; and the one
third-party warning polyvis filters for good (`filter_known_noise`, run on import)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# huggingface_hub's answer when `polyvis --verbose` has set HF_HUB_DISABLE_PROGRESS_BARS=0 and a
# quiet block asks it to hide its bars: the env var wins, as --verbose means it to
HUB_BARS_LOCKED = r"Cannot (dis|en)able progress bars: environment variable"
# peft (0.21) asks each model it wraps for `is_gradient_checkpointing`, which transformers 5
# deprecated: every LoRA run (train, and loading a LoRA model) warned about peft's own code
PEFT_CHECKPOINTING = r"`is_gradient_checkpointing` is deprecated"


def filter_known_noise() -> None:
    """Ignore the deprecation peft triggers in transformers (that message, that module only)."""
    warnings.filterwarnings(
        "ignore",
        message=PEFT_CHECKPOINTING,
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for a block, restored after it."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=HUB_BARS_LOCKED, category=UserWarning)
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=HUB_BARS_LOCKED, category=UserWarning)
                hf_logging.enable_progress_bar()


filter_known_noise()  # imported with polyvis.models.build, before any LoRA model is made
