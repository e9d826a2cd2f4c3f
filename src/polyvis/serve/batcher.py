"""Batcher: one background thread owns the model and answers requests in dynamic batches.

The worker takes the first waiting request, then keeps collecting for at most `window_ms` (or
until `max_batch`; the window is skipped when no other request is on its way), groups what it
has by sampling settings and runs one left-padded `generate` per group. Each row stops on its own (EOS, its own max_tokens, a stop string, a client that went
away) through a stopping criterion that also turns each new token into text for that request, so
streamed and non-streamed requests share batches. Rows never see each other (attention masks),
so a greedy answer in a batch equals the answer the same request gets alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from polyvis.models.tokenizer import IMAGE_TOKEN
from polyvis.serve.errors import APIError
from polyvis.serve.jobs import (
    Completion,
    Delta,
    Event,
    Failed,
    Finished,
    GenerationParams,
    Job,
    Started,
    pixel_token_counts,
)
from polyvis.serve.textstream import TextStream

__all__ = [
    "Batcher",
    "Completion",
    "Delta",
    "Event",
    "Failed",
    "Finished",
    "GenerationParams",
    "Job",
    "Started",
]


_STOP = object()


class _Row:
    """A job's state inside a running batch."""

    def __init__(self, job: Job, tokenizer: Any, ids: list[int], max_tokens: int, eos: set[int]):
        self.job, self.ids, self.max_tokens, self.eos = job, ids, max_tokens, eos
        self.prompt_tokens = len(ids)
        self.stream = TextStream(tokenizer, job.params.stop)
        self.count = 0
        self.reason: str | None = None

    def feed(self, token: int) -> None:
        if self.reason is not None:
            return
        if self.job.cancelled.is_set():
            self.reason = "cancelled"
            return
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

    def close(self) -> None:
        tail = self.stream.finish()
        if tail:
            self.job.sink(Delta(tail))
        if self.stream.stopped:
            self.reason = "stop"
        self.job.sink(Finished(self.reason or "length", self.prompt_tokens, self.count))


class _RowStopper(StoppingCriteria):
    """Feeds each step's new tokens to the rows and tells generate which rows are done."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            row.feed(token)
        return torch.tensor([r.reason is not None for r in self.rows], device=input_ids.device)


class Batcher:
    """Dynamic batching around `model.generate`; `submit` is thread-safe, `generate` blocks."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_batch: int = 32,
        window_ms: float = 5.0,
        max_queue: int = 256,
        max_tokens_limit: int = 512,
    ):
        self.model, self.processor = model, processor
        self.max_batch, self.window = max(1, max_batch), max(0.0, window_ms) / 1000.0
        self.max_tokens_limit = max_tokens_limit
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._arriving = 0  # requests being received (see `arriving`)
        self._last_batch = 1
        self.stats = {"requests": 0, "batches": 0, "max_batch_seen": 0, "cancelled": 0}
        text_config = getattr(model.config, "text_config", model.config)
        self.context = getattr(text_config, "max_position_embeddings", None)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if processor.tokenizer.eos_token_id is not None:
            eos.append(processor.tokenizer.eos_token_id)
        self.eos = set(eos)
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos), 0)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Batcher:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="polyvis-batcher", daemon=True
                )
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, refuse what still waits, and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        with suppress(queue.Full):  # else the worker is stuck; a daemon, it ends with the process
            self._queue.put(_STOP, timeout=timeout)
        thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Job):
                job.sink(Failed(APIError(503, "the server is shutting down")))

    @property
    def running(self) -> bool:
        return self._thread is not None

    def queued(self) -> int:
        return self._queue.qsize()

    # -- requests --------------------------------------------------------------------------------
    def submit(
        self,
        prompt: str,
        images: Sequence[Image.Image] | torch.Tensor | None,
        params: GenerationParams,
        sink: Callable[[Event], None],
    ) -> Job:
        """Queue a request; its events (Started, Delta..., Finished | Failed) go to `sink`.

        images: PIL images (preprocessed here, in the caller's thread) or the tensor of
        `processor.preprocess_images`; one per `<image>` marker of the prompt.
        """
        if not self.running:
            raise APIError(503, "the model worker is not running")
        pixel_values = (
            images
            if images is None or isinstance(images, torch.Tensor)
            else self.preprocess(images)
        )
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if prompt.count(IMAGE_TOKEN) != n_images:
            msg = f"the prompt has {prompt.count(IMAGE_TOKEN)} {IMAGE_TOKEN} marker(s) but {n_images} image(s)"
            raise APIError(400, msg, "messages", "image_count_mismatch")
        counts = pixel_token_counts(self.processor, pixel_values)
        job = Job(prompt, pixel_values, params, sink, token_counts=counts)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                503, "too many requests are waiting; retry later", code="queue_full"
            ) from None
        return job

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor | None:
        """PIL images -> the model's pixel tensor (thread-safe: call it off the event loop)."""
        return self.processor.preprocess_images(list(images)) if images else None

    def generate(
        self,
        prompt: str,
        images: Sequence[Image.Image] = (),
        params: GenerationParams | None = None,
    ) -> Completion:
        """Submit and wait: the answer of one request (raises its error, if any)."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        self.submit(prompt, images, params or GenerationParams(), events.put)
        parts: list[str] = []
        while True:
            event = events.get()
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return Completion(
                    "".join(parts),
                    event.finish_reason,
                    event.prompt_tokens,
                    event.completion_tokens,
                )
            elif isinstance(event, Failed):
                raise event.error

    # -- worker ----------------------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap the intake of a request (parsing, image decoding) before `submit`: while any is
        in progress the worker waits out its window for it; otherwise a lone request starts at once."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        batch, deadline = [first], time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                # Waiting pays only when more requests are on their way: some are being received,
                # or the last batch had company. A lone client never waits for the window.
                if remaining <= 0 or (self._arriving == 0 and self._last_batch <= 1):
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            if job is _STOP:
                return batch, True
            batch.append(job)
        self._last_batch = len(batch)
        return batch, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            groups: dict[Any, list[Job]] = {}
            for job in batch:
                if job.cancelled.is_set():  # its client left while it waited
                    self.stats["cancelled"] += 1
                    job.sink(Finished("cancelled", 0, 0))
                else:
                    groups.setdefault(self._group_key(job), []).append(job)
            for jobs in groups.values():
                try:
                    self._run(jobs)
                except Exception as err:  # a bug in one batch must not end the worker
                    for job in jobs:
                        job.sink(Failed(err))

    @staticmethod
    def _group_key(job: Job) -> Any:
        p = job.params
        if p.temperature == 0:
            return "greedy"
        if p.seed is not None:
            return ("seeded", id(job))  # a seed is only reproducible when the request runs alone
        return ("sample", p.temperature, p.top_p)

    def _prepare(self, job: Job) -> _Row:
        tok = self.processor.tokenizer
        # Exactly what the processor does to a prompt; the worker is the tokenizer's only user.
        text = self.processor.expand_image_tokens(job.prompt, job.token_counts)
        ids = tok(text, add_special_tokens=True)["input_ids"]
        n_prompt = len(ids)
        room = self.context - n_prompt if self.context else self.max_tokens_limit
        max_tokens = job.params.max_tokens or min(self.max_tokens_limit, room)
        if max_tokens > self.max_tokens_limit:
            raise APIError(
                400,
                f"must be at most {self.max_tokens_limit}",
                "max_tokens",
                "max_tokens_too_large",
            )
        if max_tokens > room or room < 1:
            raise APIError(
                400,
                f"the prompt is {n_prompt} tokens (images included); with max_tokens={max_tokens} it "
                f"exceeds the model's context of {self.context} tokens",
                "messages",
                "context_length_exceeded",
            )
        return _Row(job, tok, ids, max_tokens, self.eos)

    def _run(self, jobs: list[Job]) -> None:
        rows = []
        for job in jobs:
            try:
                rows.append(self._prepare(job))
            except Exception as err:
                job.sink(Failed(err))
        if not rows:
            return
        self.stats["requests"] += len(rows)
        self.stats["batches"] += 1
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rows))
        for row in rows:
            row.job.sink(Started(row.prompt_tokens))
        try:
            self._generate(rows)
        except Exception as err:  # one failed batch must not take the worker down
            for row in rows:
                if row.reason != "cancelled":
                    row.job.sink(Failed(err))
            return
        for row in rows:
            row.close()
        self.stats["cancelled"] += sum(r.reason == "cancelled" for r in rows)

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        model = self.model
        batch = left_pad([r.ids for r in rows], self.pad_id)
        pixels = [r.job.pixel_values for r in rows if r.job.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels).to(model.dtype)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        params = rows[0].job.params
        if params.temperature == 0:
            sampling: dict[str, Any] = {"do_sample": False}
        else:
            sampling = {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": 0,
            }
            if params.seed is not None:
                torch.manual_seed(params.seed)
        model.generate(
            **batch,
            max_new_tokens=max(r.max_tokens for r in rows),
            stopping_criteria=StoppingCriteriaList([_RowStopper(rows)]),
            **sampling,
        )


def left_pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token lists -> left-padded input_ids and attention_mask, as the processor pads for generate."""
    length = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
