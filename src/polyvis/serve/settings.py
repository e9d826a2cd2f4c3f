"""ServeSettings: every limit and option of the HTTP server, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
ENGINES = ("thread", "process")


@dataclass
class ServeSettings:
    """Options of `create_app` / `polyvis serve` (defaults are safe for a local server).

    model_name: the id reported by /v1/models and in responses (default: the directory name).
    api_key: when set, /v1/* needs `Authorization: Bearer <api_key>`.
    max_batch / batch_window_ms: continuous batching: at most max_batch requests decode together
        (newcomers join at the next step); an idle batcher waits at most batch_window_ms after
        the first request for others; max_batch=1 disables batching.
    max_waiting_steps / waiting_served_ratio: newcomers join a running batch once at least
        waiting_served_ratio x its rows wait, or after max_waiting_steps decoding steps (TGI's
        max_waiting_tokens and waiting_served_ratio); max_waiting_steps=0 admits at every step.
    max_queue: requests waiting beyond this are refused with 503.
    max_tokens_limit: the largest max_tokens a request may ask for (and the default).
    allow_local_files: a directory whose files requests may name as images (None: refused).
    web: serve the chat page at GET / (it is one more client of /v1/chat/completions).
    engine: "thread" runs the models in the server's process, "process" in a process of their
        own, so the HTTP front end does not share an interpreter lock with them
        (polyvis.serve.engine; model directories only).
    box_format: how the chat page reads the boxes [x1, y1, x2, y2] in answers to draw them:
        "pixels" of the image sent, or "norm1000" (0-1000 of its width and height, what the
        coco and refcoco converters write by default); /v1/models reports it per model.
    """

    model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 32
    batch_window_ms: float = 5.0
    max_waiting_steps: int = 8
    waiting_served_ratio: float = 1.2
    max_queue: int = 256
    max_tokens_limit: int = 512
    max_body_bytes: int = 32 * MiB
    max_image_bytes: int = 10 * MiB
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_stop: int = 4
    allow_local_files: Path | None = None
    device: str | None = None
    dtype: str | None = None
    web: bool = True
    engine: str = "thread"
    box_format: str = "pixels"

    def __post_init__(self) -> None:
        from polyvis.data.boxes import check_box_format
        from polyvis.errors import ConfigError

        check_box_format(self.box_format)

        for name in (
            "max_batch",
            "max_queue",
            "max_tokens_limit",
            "max_body_bytes",
            "max_image_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("max_image_pixels", "max_images", "max_stop"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must not be negative, got {getattr(self, name)}")
        for name in ("batch_window_ms", "max_waiting_steps", "waiting_served_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must not be negative, got {getattr(self, name)}")
        if self.engine not in ENGINES:
            raise ConfigError("engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.allow_local_files is not None:
            root = Path(self.allow_local_files).expanduser().resolve()
            if not root.is_dir():
                raise ConfigError("allow_local_files", f"{root} is not a directory")
            self.allow_local_files = root
