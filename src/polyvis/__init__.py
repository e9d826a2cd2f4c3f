"""polyvis: vision-language models that mix several visual encoders.

    from polyvis import build_model, load_model
    from polyvis import PolyVisConfig, PolyVisForConditionalGeneration, PolyVisProcessor

The names load on first use, so `import polyvis` itself stays light: every polyvis module (the
config layer, the `polyvis` command) imports this package first and must not pay for torch and
transformers. polyvis registers with transformers' AutoConfig, AutoModelForImageTextToText and
AutoProcessor (which then load a saved model directory) as soon as transformers is imported,
before or after polyvis, or when any of these names is first used.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
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


def _register_auto_classes() -> None:
    """Import the model module, whose last lines register the Auto classes. Skipped while a polyvis
    module is itself being imported: that import chain may meet a half-built module, and the
    polyvis modules that use the Auto classes import the model module themselves."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name.startswith("polyvis.") and getattr(spec, "_initializing", False):
            return
    import_module("polyvis.models.modeling")


class _AfterTransformers(MetaPathFinder):
    """Runs _register_auto_classes once transformers' package has been imported: the Auto classes
    need polyvis's model classes, whose import costs torch, so `import polyvis` cannot pay for it
    up front."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            run(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTransformers())
