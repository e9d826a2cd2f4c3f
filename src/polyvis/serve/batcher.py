"""Batcher: one background thread owns the model and decodes requests by continuous batching.

The worker keeps one running batch (polyvis.serve.decode_batch.DecodeBatch) and advances it one
token per step. Before a step, the requests that have arrived join it: they are prefilled
together (images encoded, prompts run into a fresh KV cache) and their cache rows merged into the
running one. As in TGI, newcomers join once enough of them wait or the oldest has waited a few
steps, so they are prefilled in groups. After each step a row that is done (EOS, its own
max_tokens, a stop string, a client that went away) leaves at once with its cache rows, so
short answers never wait for long ones.
When nothing runs, the worker takes the first request and collects others for at most
`window_ms` (skipped when no other request is on its way), so a burst is prefilled as one group.

Each row picks its tokens with its own settings (greedy, temperature / top-p, its own seed) and
turns each token into text for its request, so streamed and non-streamed requests share steps.
Rows never see each other (attention masks; each row's own position ids), so a greedy answer in
the batch equals the answer the same request gets alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

import torch
from PIL import Image

from polyvis.models.tokenizer import IMAGE_TOKEN
from polyvis.serve.decode_batch import DecodeBatch, choose_tokens
from polyvis.serve.errors import APIError
from polyvis.serve.jobs import (
    Arrivals,
    Completion,
    Delta,
    Event,
    Failed,
    Finished,
    GenerationParams,
    Job,
    Row,
    Started,
    as_pixels,
    collecting,
    lm_context,
    pixel_token_counts,
    token_budget,
)

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


class Batcher:
    """Continuous batching around the model's forward; `submit` is thread-safe, `generate` blocks.

    max_batch: most rows decoding at once (1: one request at a time); window_ms: how long an
    idle worker gathers a burst before prefilling it; max_waiting_steps / waiting_served_ratio:
    when newcomers join a running batch (`_admit_now`; 0 steps: at the next step). `stats`:
    requests, batches (prefill groups), max_batch_seen (most rows in one step), cancelled.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_batch: int = 32,
        window_ms: float = 5.0,
        max_queue: int = 256,
        max_tokens_limit: int = 512,
        max_waiting_steps: int = 8,
        waiting_served_ratio: float = 1.2,
        arrivals: Any = None,
    ):
        self.model, self.processor = model, processor
        self.max_batch, self.window = max(1, max_batch), max(0.0, window_ms) / 1000.0
        self.max_waiting_steps = max(0, max_waiting_steps)
        self.waiting_served_ratio = max(0.0, waiting_served_ratio)
        self._held = 0  # decoding steps the oldest waiting request has been held for
        self.max_tokens_limit = max_tokens_limit
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.arrivals = Arrivals(arrivals)  # requests being received (see `arriving`)
        self._last_batch = 1
        self.stats = {
            "requests": 0,
            "batches": 0,
            "max_batch_seen": 0,
            "cancelled": 0,
        }
        self.context = lm_context(model.config)
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
        """Finish the rows in progress, refuse what still waits, and end the thread."""
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
                job.sink(Failed(APIError(503, "the server is shutting down", code="shutting_down")))

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
        collect: bool = False,
    ) -> Job:
        """Queue a request; its events (Started, Delta..., Finished | Failed) go to `sink`.

        images: PIL images (preprocessed here, in the caller's thread) or the tensor of
        `processor.preprocess_images`; one per `<image>` marker of the prompt.
        collect: the text is wanted only at the end, so deltas are joined and sent with
        Finished (polyvis.serve.jobs.collecting).
        """
        if not self.running:
            raise APIError(503, "the model worker is not running", code="engine_stopped")
        pixel_values = as_pixels(self.processor, images)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if prompt.count(IMAGE_TOKEN) != n_images:
            msg = f"the prompt has {prompt.count(IMAGE_TOKEN)} {IMAGE_TOKEN} marker(s) but {n_images} image(s)"
            raise APIError(400, msg, "messages", "image_count_mismatch")
        counts = pixel_token_counts(self.processor, pixel_values)
        job = Job(
            prompt, pixel_values, params, collecting(sink) if collect else sink, token_counts=counts
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                503, "too many requests are waiting; retry later", code="queue_full"
            ) from None
        return job

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor | None:
        """PIL images -> the model's pixel tensor (thread-safe: call it off the event loop)."""
        return as_pixels(self.processor, images)

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
    def arriving(self) -> AbstractContextManager[None]:
        """Wrap the intake of a request (parsing, image decoding) before `submit`: while any is
        in progress the worker waits out its window for it; otherwise a lone request starts at
        once."""
        return self.arrivals.counting()

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """An idle worker's first job and those arriving within the window (see `arriving`)."""
        batch, deadline = [first], time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                # Waiting pays only when more requests are on their way: some are being received,
                # or the last group had company. A lone client never waits for the window.
                if remaining <= 0 or (self.arrivals.value == 0 and self._last_batch <= 1):
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

    def _drain(self, room: int) -> tuple[list[Job], bool]:
        """What waits now, up to `room` jobs, without waiting: they join at this step."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        batch: DecodeBatch | None = None
        stopping = False
        while batch is not None or not stopping:
            jobs: list[Job] = []
            if batch is None:
                first = self._queue.get()
                if first is _STOP:
                    break
                jobs, stopping = self._collect(first)
            elif not stopping and len(batch) < self.max_batch and self._admit_now(len(batch)):
                jobs, stopping = self._drain(self.max_batch - len(batch))
            try:
                if jobs:
                    batch = self._admit(jobs, batch)
                if batch is not None:
                    batch = self._advance(batch)
            except Exception as err:  # a bug must not end the worker: the rows in flight fail
                if batch is not None:
                    self._fail(batch.rows, err)
                batch = None

    def _admit_now(self, running: int) -> bool:
        """Whether the waiting requests join the running batch at this step (TGI's rule): at
        once when enough wait (at least `waiting_served_ratio` times the running rows), else
        after `max_waiting_steps` steps. A prefill costs several decoding steps, so one group of
        newcomers is cheaper than the same requests admitted one step at a time."""
        waiting = self._queue.qsize()
        if not waiting:
            self._held = 0
            return False
        if self._held >= self.max_waiting_steps or waiting >= self.waiting_served_ratio * running:
            self._held = 0
            return True
        self._held += 1
        return False

    def _admit(self, jobs: list[Job], batch: DecodeBatch | None) -> DecodeBatch | None:
        """Prefill the newcomers as one group and merge them into the running batch."""
        rows = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                self.stats["cancelled"] += 1
                job.sink(Finished("cancelled", 0, 0))
                continue
            try:
                rows.append(self._prepare(job))
            except Exception as err:
                job.sink(Failed(err))
        if not rows:
            return batch
        self.stats["requests"] += len(rows)
        for row in rows:
            row.job.sink(Started(row.prompt_tokens))
        new = self._prefill(rows)
        if new is None:
            return batch
        if batch is None:
            batch = new
        else:
            try:
                batch.merge(new)
            except Exception as err:
                self._fail(batch.rows + new.rows, err)
                return None
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
        return batch

    def _prefill(self, rows: list[Row]) -> DecodeBatch | None:
        """The rows' prompts into a new batch, their first tokens chosen; finished rows retired."""
        pixels = [r.job.pixel_values for r in rows if r.job.pixel_values is not None]
        try:
            new, logits = DecodeBatch.prefill(
                self.model,
                [r.ids for r in rows],
                torch.cat(pixels) if pixels else None,
                self.pad_id,
                rows,
            )
        except Exception as err:
            if len(rows) == 1:
                self._fail(rows, err)
                return None
            # One bad request must not fail the others it came with: each again, alone.
            parts = [p for p in (self._prefill([r]) for r in rows) if p is not None]
            for part in parts[1:]:
                parts[0].merge(part)
            return parts[0] if parts else None
        self.stats["batches"] += 1
        try:
            choose_tokens(new.rows, logits)
        except Exception as err:
            self._fail(rows, err)
            return None
        return self._retire(new)

    def _advance(self, batch: DecodeBatch) -> DecodeBatch | None:
        """One decoding step for every row; rows that are done leave the batch at once."""
        for row in batch.rows:
            if row.reason is None and row.job.cancelled.is_set():
                row.reason = "cancelled"  # its client left: no step is spent on it
        live = self._retire(batch)
        if live is None:
            return None
        try:
            tokens = torch.tensor([r.token for r in live.rows], dtype=torch.long)
            choose_tokens(live.rows, live.step(self.model, tokens))
        except Exception as err:  # a failed step must not take the worker down
            self._fail(live.rows, err)
            return None
        return self._retire(live)

    def _retire(self, batch: DecodeBatch) -> DecodeBatch | None:
        """Close the rows that are done and drop them (and their cache rows) from the batch."""
        keep = []
        for i, row in enumerate(batch.rows):
            if row.reason is None:
                keep.append(i)
                continue
            row.close()
            self.stats["cancelled"] += row.reason == "cancelled"
        if not keep:
            return None
        batch.keep(keep)
        return batch

    def _fail(self, rows: list[Row], err: Exception) -> None:
        for row in rows:
            row.fail(err)

    def _prepare(self, job: Job) -> Row:
        tok = self.processor.tokenizer
        # Exactly what the processor does to a prompt; the worker is the tokenizer's only user.
        text = self.processor.expand_image_tokens(job.prompt, job.token_counts)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        budget = token_budget(len(ids), job.params.max_tokens, self.context, self.max_tokens_limit)
        return Row(job, tok, ids, budget, self.eos, self.model.device)
