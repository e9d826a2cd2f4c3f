"""The models one server serves: each under its own id, each with its own batcher thread."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError
from polyvis.serve.batcher import Batcher
from polyvis.serve.engine import Engine, RemoteBatcher, make_batcher
from polyvis.serve.errors import APIError
from polyvis.serve.jobs import lm_context
from polyvis.serve.settings import ServeSettings

ModelSource = str | Path | tuple[Any, Any]  # a model directory, or (model, processor) loaded


@dataclass
class ServedModel:
    name: str
    batcher: Batcher | RemoteBatcher
    processor: Any
    context: int | None = None  # the LM's max_position_embeddings, where it has one
    longest_token: int = field(init=False)  # characters of the longest vocabulary entry

    def __post_init__(self) -> None:
        vocab = self.processor.tokenizer.get_vocab()
        self.longest_token = max((len(t) for t in vocab), default=1)


def model_ids(dirs: Sequence[str | Path]) -> list[str]:
    """An id per model directory: its name, or, where names repeat, the shortest path tail that
    tells them apart (`demo/runs/clip-nano/final` -> `clip-nano/final` beside other `final`s)."""
    parts = [Path(d).resolve().parts for d in dirs]
    if len(set(parts)) < len(parts):
        raise ConfigError("models", "the same model directory is given twice")
    ids = []
    for mine in parts:
        for k in range(1, len(mine) + 1):
            tail = mine[-k:]
            if sum(p[-k:] == tail for p in parts) == 1:
                break
        ids.append("/".join(tail))
    return ids


def build_served(
    models: ModelSource | Mapping[str, ModelSource],
    settings: ServeSettings,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, ServedModel]:
    """Load every model and wrap each in a (not yet started) batcher, in the given order.

    models: one directory (its id is settings.model_name or the directory's name; `loaded`
    may hold its (model, processor)), or a mapping id -> directory or (model, processor).
    """
    if isinstance(models, Mapping):
        if settings.model_name is not None:
            raise ConfigError("model_name", "name each model in the mapping instead")
        if loaded is not None:
            raise ConfigError("loaded", "give (model, processor) pairs as the mapping's values")
        sources = dict(models)
    else:
        name = settings.model_name or Path(models).resolve().name
        sources = {name: loaded if loaded is not None else models}
    if not sources:
        raise ConfigError("models", "no model to serve")
    for name in sources:
        if not isinstance(name, str) or not name:
            raise ConfigError("models", f"a model id must be a non-empty string, got {name!r}")
    if settings.engine == "process":
        return _remote(sources, settings)
    served = {}
    for name, source in sources.items():
        if isinstance(source, tuple):
            model, processor = source
        else:
            from polyvis.models.build import load_model

            model, processor = load_model(source, dtype=settings.dtype, device=settings.device)
        batcher = make_batcher(model, processor, settings)
        served[name] = ServedModel(name, batcher, processor, lm_context(model.config))
    return served


def _remote(sources: dict[str, Any], settings: ServeSettings) -> dict[str, ServedModel]:
    """Every model in one engine process (started with the app); processors load here."""
    from polyvis.models.build import model_dir
    from polyvis.models.modeling import PolyVisConfig
    from polyvis.models.processing import PolyVisProcessor

    for source in sources.values():
        if not isinstance(source, str | Path):
            raise ConfigError(
                "engine", "an engine process loads its models itself: give model directories"
            )
        model_dir(source)  # before a process starts for it
    engine, served = Engine(sources, settings), {}
    for name, source in sources.items():
        processor = PolyVisProcessor.from_pretrained(source)
        context = lm_context(PolyVisConfig.from_pretrained(source))
        served[name] = ServedModel(name, RemoteBatcher(engine, name, processor), processor, context)
    return served


def pick(served: dict[str, ServedModel], model_id: str | None) -> ServedModel:
    """The model a request names (the first one served when it names none); 404 otherwise."""
    if model_id is None:
        return next(iter(served.values()))
    if model_id not in served:
        names = ", ".join(repr(n) for n in served)
        raise APIError(
            404, f"no model {model_id!r}; this server serves {names}", "model", "model_not_found"
        )
    return served[model_id]


def health_stats(served: dict[str, ServedModel]) -> dict[str, Any]:
    """The batchers' counters added up (maxima for max_*), and each model's own with several."""
    each = {s.name: {"queued": s.batcher.queued(), **s.batcher.stats} for s in served.values()}
    rows = list(each.values())
    total = {key: (max if key.startswith("max") else sum)(r[key] for r in rows) for key in rows[0]}
    if len(served) > 1:
        total["per_model"] = each
    return total
