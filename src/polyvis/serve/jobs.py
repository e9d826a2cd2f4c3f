"""What a request is inside the server: its generation parameters, the job queued for the
batcher, the events the batcher sends back (Started, Delta..., then Finished or Failed), and its
row while it decodes (`Row`)."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from polyvis.models.tiling import Tiling, present_views
from polyvis.serve.errors import APIError
from polyvis.serve.textstream import TextStream


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
    ((n, K, 3, H, W) as `processor.preprocess_images` makes them, or None), where events go, and
    each image's visual token count where images have their own (a tiled encoder), else None."""

    prompt: str
    pixel_values: torch.Tensor | None
    params: GenerationParams
    sink: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    token_counts: list[int] | None = None

    def cancel(self) -> None:
        """The client went away: its row stops at the next token."""
        self.cancelled.set()


class Row:
    """A job while it decodes: its prompt ids, token budget, sampling settings (a generator of
    its own when seeded, so the draw does not depend on the other rows), text stream, and
    `token`, the last token chosen for it, which the next decoding step feeds to the model."""

    def __init__(
        self,
        job: Job,
        tokenizer: Any,
        ids: list[int],
        max_tokens: int,
        eos: set[int],
        device: Any = "cpu",
    ):
        self.job, self.ids, self.max_tokens, self.eos = job, ids, max_tokens, eos
        self.prompt_tokens = len(ids)
        self.stream = TextStream(tokenizer, job.params.stop)
        self.count = 0
        self.reason: str | None = None
        self.token: int | None = None
        p = job.params
        self.temperature, self.top_p = p.temperature, p.top_p
        self.generator: torch.Generator | None = None
        if p.temperature > 0 and p.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(p.seed)

    def feed(self, token: int) -> None:
        """The token chosen for this row: counted, streamed, checked against its stops."""
        if self.reason is not None:
            return
        if self.job.cancelled.is_set():
            self.reason = "cancelled"
            return
        self.token = token
        self.count += 1
        if token in self.eos:
            self.reason = "stop"
            return
        delta = self.stream.push(token)
        if delta:
            self.job.sink(Delta(delta))
        if self.stream.stopped:
            self.reason = "stop"
        elif self.count >= self.max_tokens:
            self.reason = "length"

    def fail(self, err: Exception) -> None:
        """This row alone failed: its request gets the error, and the row leaves at the next
        retirement with nothing more sent."""
        if self.reason not in ("cancelled", "failed"):  # a client that left needs no error
            self.job.sink(Failed(err))
        self.reason = "failed"

    def close(self) -> None:
        """The row has left the batch: send what the stream held back, then Finished."""
        if self.reason == "failed":
            return
        if self.reason != "cancelled":  # nobody listens any more: nothing but the end is sent
            tail = self.stream.finish()
            if tail:
                self.job.sink(Delta(tail))
            if self.stream.stopped:
                self.reason = "stop"
        self.job.sink(Finished(self.reason or "length", self.prompt_tokens, self.count))


class Arrivals:
    """How many requests are being received (parsed, their images decoded) before `submit`:
    while any is, an idle batcher waits out its window for them. `shared` is any int with a
    `.value` (a ctypes int by default; multiprocessing's RawValue, which is one in shared memory,
    when the HTTP front end counts in another process than the batcher reads)."""

    def __init__(self, shared: Any = None):
        self.shared = shared if shared is not None else ctypes.c_int(0)
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self.shared.value

    @contextmanager
    def counting(self) -> Iterator[None]:
        with self._lock:
            self.shared.value += 1
        try:
            yield
        finally:
            with self._lock:
                self.shared.value -= 1


def as_pixels(processor: Any, images: Any) -> torch.Tensor | None:
    """A request's images as the model's pixel tensor: PIL images are preprocessed (in the
    caller's thread), a tensor of `processor.preprocess_images` or None passes as it is."""
    if images is None or isinstance(images, torch.Tensor):
        return images
    return processor.preprocess_images(list(images)) if images else None


def collecting(sink: Callable[[Event], None]) -> Callable[[Event], None]:
    """A sink that joins the deltas and hands them over just before Finished: for a request that
    needs its text only at the end, two hand-overs (wake-ups of the server's loop, messages from
    the engine process) instead of one a token."""
    parts: list[str] = []

    def collect(event: Event) -> None:
        if isinstance(event, Delta):
            parts.append(event.text)
            return
        if parts and isinstance(event, Finished):
            sink(Delta("".join(parts)))
            parts.clear()
        sink(event)

    return collect


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def pixel_token_counts(processor: Any, pixel_values: torch.Tensor | None) -> list[int] | None:
    """Each image's visual token count, read from `processor.preprocess_images` output; None
    when every image has image_seq_length tokens (untiled, or a fixed-length fusion).

    A tiled encoder's unused slots are NaN, so the tensor carries each image's tile grid, as
    the model reads it (docs/tiling.md). Only one encoder may be tiled, so the encoders before
    it take one slot each.
    """
    if pixel_values is None or not getattr(processor, "tokens_vary", False):
        return None
    tiling = Tiling.from_dict(processor.tiling)
    start = processor.encoder_names.index(processor.tiling["encoder"])
    present = present_views(pixel_values[:, start : start + tiling.views])
    return [
        processor.image_seq_length * tiling.num_views(tiling.layout(row))
        for row in present.tolist()
    ]


def lm_context(config: Any) -> int | None:
    """The LM's context length from a polyvis model's config (None when it does not say)."""
    text_config = getattr(config, "text_config", config)
    return getattr(text_config, "max_position_embeddings", None)


def token_budget(n_prompt: int, requested: int | None, context: int | None, limit: int) -> int:
    """The tokens a request may generate: its max_tokens, else what the server's limit and the
    context leave; a 400 naming max_tokens or messages when it asks for more than either."""
    room = context - n_prompt if context else limit
    max_tokens = requested or min(limit, room)
    if max_tokens > limit:
        raise APIError(400, f"must be at most {limit}", "max_tokens", "max_tokens_too_large")
    if max_tokens > room or room < 1:
        asked = f"with max_tokens={max_tokens} it exceeds" if requested else "it leaves no room in"
        raise APIError(
            400,
            f"the prompt is {n_prompt} tokens (images included); {asked} the model's context "
            f"of {context} tokens",
            "messages",
            "context_length_exceeded",
        )
    return max_tokens
