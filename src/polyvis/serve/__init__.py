"""OpenAI-compatible serving: `create_app(model_dir or {id: model_dir, ...}, settings)` (the API
and the chat page) and the continuous-batching `Batcher`.

Names are imported lazily, so `import polyvis.serve.<module>` stays cheap (no FastAPI import).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_app": "polyvis.serve.app",
    "ServeSettings": "polyvis.serve.settings",
    "Batcher": "polyvis.serve.batcher",
    "Completion": "polyvis.serve.jobs",
    "GenerationParams": "polyvis.serve.jobs",
    "APIError": "polyvis.serve.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polyvis.serve' has no attribute {name!r}")
