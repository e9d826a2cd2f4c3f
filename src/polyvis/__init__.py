"""polyvis: vision-language models that mix several visual encoders.

    from polyvis import build_model, load_model
    from polyvis import PolyVisConfig, PolyVisForConditionalGeneration, PolyVisProcessor

The names load on first use, so `import polyvis` itself stays light: every polyvis module (the
config layer, the `polyvis` command) imports this package first and must not pay for torch and
transformers. Loading any of them registers polyvis with transformers' AutoConfig,
AutoModelForImageTextToText and AutoProcessor, which then load a saved model directory.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PolyVisConfig": "polyvis.models.modeling",
    "PolyVisForConditionalGeneration": "polyvis.models.modeling",
    "PolyVisProcessor": "polyvis.models.processing",
    "build_model": "polyvis.models.build",
    "load_model": "polyvis.models.build",
}

__all__ = [
    "PolyVisConfig",
    "PolyVisForConditionalGeneration",
    "PolyVisProcessor",
    "__version__",
    "build_model",
    "load_model",
]

if TYPE_CHECKING:
    from polyvis.models.build import build_model, load_model
    from polyvis.models.modeling import PolyVisConfig, PolyVisForConditionalGeneration
    from polyvis.models.processing import PolyVisProcessor


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'polyvis' has no attribute {name!r}")
    # the Auto-class registration lives beside the model classes; every name brings it along
    import_module("polyvis.models.modeling")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
