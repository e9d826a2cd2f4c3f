"""The model engine in a process of its own (`polyvis serve --engine process`).

With the models in the server's process (`--engine thread`, `create_app`'s default), the HTTP
event loop, request parsing and image preprocessing share one interpreter lock with the model's
thread, so on a CPU the whole server runs on about one core. Here, as in vLLM's V1 engine, the HTTP front
end and the model run in two processes: the front end parses, renders prompts and preprocesses
images; the engine process owns the models, one `Batcher` thread each, exactly as in-process.

Front end -> engine, over one pipe: ("submit", id, model, prompt, pixels, params, collect),
("cancel", id), ("stats", id), ("stop",). Engine -> front end: ("ready", None | error text),
("event", id, event) (Started, Delta..., Finished | Failed), ("stats", id, {model: stats}).
The count of requests being received (`Batcher.arriving`) is shared memory, one int a model.
A front end whose engine dies fails every open request with a 503 and reports unhealthy.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from polyvis.serve.batcher import Batcher
from polyvis.serve.errors import APIError, as_api_error
from polyvis.serve.jobs import (
    Arrivals,
    Event,
    Failed,
    Finished,
    GenerationParams,
    Started,
    as_pixels,
)
from polyvis.serve.settings import ServeSettings

_START_TIMEOUT_S = 600.0  # loading a large model from a slow disk
_STATS_TIMEOUT_S = 5.0


def make_batcher(
    model: Any, processor: Any, settings: ServeSettings, arrivals: Any = None
) -> Batcher:
    """A (not yet started) batcher with the settings' batching options."""
    return Batcher(
        model,
        processor,
        max_batch=settings.max_batch,
        window_ms=settings.batch_window_ms,
        max_waiting_steps=settings.max_waiting_steps,
        waiting_served_ratio=settings.waiting_served_ratio,
        max_queue=settings.max_queue,
        max_tokens_limit=settings.max_tokens_limit,
        arrivals=arrivals,
    )


def _engine_main(
    conn: Any, sources: dict[str, str], settings: ServeSettings, threads: int | None, arrivals: dict
) -> None:
    """The engine process: load every model, start its batcher, and serve the pipe."""
    from polyvis.models.build import load_model

    if threads:
        torch.set_num_threads(threads)
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock, suppress(OSError):  # the front end has gone: nothing to tell
            conn.send(message)

    try:
        batchers = {}
        for name, path in sources.items():
            model, processor = load_model(path, dtype=settings.dtype, device=settings.device)
            batchers[name] = make_batcher(model, processor, settings, arrivals[name]).start()
    except Exception as err:  # reported by the front end's start, which raises it
        send(("ready", f"{type(err).__name__}: {err}"))
        return
    send(("ready", None))
    jobs: dict[int, Any] = {}  # open jobs by id
    ended: set[int] = set()  # jobs that ended before submit returned them
    jobs_lock = threading.Lock()

    def sink_for(jid: int) -> Callable[[Event], None]:
        def sink(event: Event) -> None:
            if isinstance(event, Failed):
                event = Failed(as_api_error(event.error))
            if isinstance(event, Finished | Failed):
                with jobs_lock:  # it may end before submit has returned its job
                    if jobs.pop(jid, None) is None:
                        ended.add(jid)
            send(("event", jid, event))

        return sink

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the front end has gone
            break
        kind = message[0]
        if kind == "submit":
            _, jid, name, prompt, pixels, params, collect = message
            pixel_values = None if pixels is None else torch.from_numpy(pixels)
            try:
                job = batchers[name].submit(
                    prompt, pixel_values, params, sink_for(jid), collect=collect
                )
            except Exception as err:
                send(("event", jid, Failed(as_api_error(err))))
                continue
            with jobs_lock:  # kept for "cancel" until it ends; an ended one holds no tensors here
                if jid in ended:
                    ended.discard(jid)
                else:
                    jobs[jid] = job
        elif kind == "cancel":
            job = jobs.get(message[1])
            if job is not None:
                job.cancel()
        elif kind == "stats":
            stats = {n: {"queued": b.queued(), **b.stats} for n, b in batchers.items()}
            send(("stats", message[1], stats))
        elif kind == "stop":
            break
    for batcher in batchers.values():
        batcher.stop()
    send(("stopped",))


class RemoteJob:
    """The front end's handle on a request the engine runs: `cancel` stops its row."""

    def __init__(self, engine: Engine, jid: int):
        self.engine, self.jid = engine, jid

    def cancel(self) -> None:
        self.engine._cancel(self.jid)


class Engine:
    """The front end's side: starts the engine process, sends it requests, and hands the events
    it sends back to each request's sink (from one reader thread)."""

    def __init__(self, sources: Mapping[str, str | Path], settings: ServeSettings):
        self.sources = {name: str(path) for name, path in sources.items()}
        self.settings = settings
        self._ctx = mp.get_context("spawn")  # a forked torch with threads is unsafe
        self.arrivals = {name: Arrivals(self._ctx.RawValue("i", 0)) for name in self.sources}
        self._sinks: dict[int, tuple[str, Callable[[Event], None]]] = {}
        self._waiting: dict[str, set[int]] = {name: set() for name in self.sources}
        self._replies: dict[int, Any] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the maps above and the pipe's sending end
        self._replied = threading.Condition(self._lock)
        self._process: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None
        self.running = False
        self.last_stats: dict[str, dict[str, int]] = {}

    def start(self) -> None:
        """Start the engine process and wait until its models are loaded (raises its error)."""
        if self.running:
            return
        ours, theirs = self._ctx.Pipe()
        threads = torch.get_num_threads()
        shared = {name: a.shared for name, a in self.arrivals.items()}  # the lock stays here
        self._process = self._ctx.Process(
            target=_engine_main,
            args=(theirs, self.sources, self.settings, threads, shared),
            name="polyvis-engine",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        if not ours.poll(_START_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError(
                f"the engine process did not load its models in {_START_TIMEOUT_S} s"
            )
        try:
            kind, error = ours.recv()
        except EOFError:
            self._process.join(30)
            raise RuntimeError(
                f"the engine process ended while loading (exit code {self._process.exitcode}); "
                "a script that starts one must do so under `if __name__ == '__main__':`, as for "
                "any spawned process"
            ) from None
        if error is not None:
            self._process.join(30)
            raise RuntimeError(f"the engine process could not load the models: {error}")
        self._conn, self.running = ours, True
        self._reader = threading.Thread(
            target=self._read, name="polyvis-engine-reader", daemon=True
        )
        self._reader.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the engine finish the rows in progress and end; refuses what is still open."""
        if self._process is None:
            return
        with self._lock, suppress(OSError):
            self._conn.send(("stop",))
        if self._reader is not None:
            self._reader.join(timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
        self._process = None
        self._fail_open(APIError(503, "the server is shutting down", code="shutting_down"))

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "event":
                self._deliver(message[1], message[2])
            elif kind == "stats":
                with self._lock:
                    self._replies[message[1]] = message[2]
                    self._replied.notify_all()
            elif kind == "stopped":
                break
        self.running = False
        self._fail_open(APIError(503, "the model engine stopped", code="engine_stopped"))

    def _deliver(self, jid: int, event: Event) -> None:
        with self._lock:
            entry = self._sinks.get(jid)
            if entry is None:
                return
            name, sink = entry
            if isinstance(event, Started | Finished | Failed):
                self._waiting[name].discard(jid)
            if isinstance(event, Finished | Failed):
                del self._sinks[jid]
        sink(event)

    def _fail_open(self, error: APIError) -> None:
        with self._lock:
            open_sinks = list(self._sinks.values())
            self._sinks.clear()
            for waiting in self._waiting.values():
                waiting.clear()
        for _, sink in open_sinks:
            sink(Failed(error))

    def submit(
        self,
        name: str,
        prompt: str,
        pixel_values: torch.Tensor | None,
        params: GenerationParams,
        sink: Callable[[Event], None],
        collect: bool,
    ) -> RemoteJob:
        if not self.running:
            raise APIError(503, "the model worker is not running", code="engine_stopped")
        # numpy, not a tensor: torch would pass the tensor through shared memory, a file
        # descriptor a request, where a small image's bytes are cheaper to copy
        pixels = None if pixel_values is None else pixel_values.numpy()
        jid = next(self._ids)
        with self._lock:
            self._sinks[jid] = (name, sink)
            self._waiting[name].add(jid)
            try:
                self._conn.send(("submit", jid, name, prompt, pixels, params, collect))
            except OSError:
                del self._sinks[jid]
                self._waiting[name].discard(jid)
                raise APIError(503, "the model engine stopped", code="engine_stopped") from None
        return RemoteJob(self, jid)

    def _cancel(self, jid: int) -> None:
        with self._lock:
            if jid in self._sinks:
                with suppress(OSError):
                    self._conn.send(("cancel", jid))

    def queued(self, name: str) -> int:
        """Requests sent to the engine that have not started decoding yet."""
        return len(self._waiting[name])

    def stats(self, name: str) -> dict[str, int]:
        """The engine's counters for one model (the last known ones if it does not answer)."""
        rid = next(self._ids)
        with self._lock:
            if self.running:
                with suppress(OSError):
                    self._conn.send(("stats", rid))
                    self._replied.wait_for(lambda: rid in self._replies, _STATS_TIMEOUT_S)
            reply = self._replies.pop(rid, None)
        if reply is not None:
            self.last_stats = reply
        stats = dict(self.last_stats.get(name, {}))
        stats.pop("queued", None)
        return stats


class RemoteBatcher:
    """One model of an `Engine`, with the interface the app uses of a `Batcher`."""

    def __init__(self, engine: Engine, name: str, processor: Any):
        self.engine, self.name, self.processor = engine, name, processor

    def start(self) -> RemoteBatcher:
        self.engine.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.engine.stop(timeout)

    @property
    def running(self) -> bool:
        return self.engine.running

    def queued(self) -> int:
        return self.engine.queued(self.name)

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats(self.name)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor | None:
        return as_pixels(self.processor, images)

    def submit(
        self,
        prompt: str,
        images: Sequence[Image.Image] | torch.Tensor | None,
        params: GenerationParams,
        sink: Callable[[Event], None],
        collect: bool = False,
    ) -> RemoteJob:
        """As `Batcher.submit`; its errors (a 400 for a prompt too long, a 503 for a full queue)
        come back as a Failed event rather than raised here."""
        pixel_values = as_pixels(self.processor, images)
        return self.engine.submit(self.name, prompt, pixel_values, params, sink, collect)

    def arriving(self) -> AbstractContextManager[None]:
        """As `Batcher.arriving`, counted in memory the engine process reads."""
        return self.engine.arrivals[self.name].counting()
