"""Training: the two-stage recipe (align, finetune) on accelerate, with exact resume."""

from polyvis.train.loop import train

__all__ = ["train"]
