"""What a request is inside the server: its generation parameters, the job queued for the
batcher, and the events the batcher sends back (Started, Delta..., then Finished or Failed)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GenerationParams:
    """max_tokens None: as many as the server limit and the context allow; temperature 0: greedy."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Started:
    prompt_tokens: int


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    error: Exception


Event = Started | Delta | Finished | Failed


@dataclass
class Job:
    """One request: a rendered prompt with `<image>` markers, its preprocessed images
    ((n, K, 3, H, W) as `processor.preprocess_images` makes them, or None) and where events go."""

    prompt: str
    pixel_values: torch.Tensor | None
    params: GenerationParams
    sink: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: its row stops at the next token."""
        self.cancelled.set()


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
