"""The one training loop of the nano experts; each expert is a Recipe of the steps that differ.

train_expert() runs, in this order: validate the settings, collect the training records, the
recipe's vocabulary, torch.manual_seed, the recipe's model, every training image loaded once,
the recipe's preparation, then AdamW steps (warm-up + cosine, gradients clipped at 1) over seeded
index batches, the recipe's evaluation and save, and OUT/training_log.json. The order fixes where
each random number goes, so an expert built again from the same settings is the same bytes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from polyvis.errors import ConfigError, PolyVisError, config_error_from
from polyvis.models.load_checks import config_message, config_refusals
from polyvis.nano._common import (
    Sample,
    Settings,
    StepCallback,
    adamw_steps,
    collect_samples,
    load_pixels,
    parse_settings,
    require_samples,
    torch_threads,
    unique_images,
)
from polyvis.paths import write_json_atomic

S = TypeVar("S", bound=Settings)


class Recipe(ABC, Generic[S]):
    """What one expert adds to the shared loop. train_expert() creates it once the training
    records are collected, sets `model` and `processor` from build(), and calls each hook once at
    its place; loss() and after_step() once per step."""

    name: ClassVar[str]  # the log's "expert" and the progress bar's label
    settings_class: ClassVar[type[Settings]]
    samples: ClassVar[str]  # what the training records are, for the "none found" error
    read_layer: ClassVar[int]  # the layer polyvis should read
    # the per-step curves logged as NAME_curve, "loss" (the optimised one) first; and those whose
    # mean over the last 20 steps is logged as final_NAME
    curves: ClassVar[tuple[str, ...]] = ("loss",)
    finals: ClassVar[tuple[str, ...]] = ("loss",)
    # the settings that hold the model's config, named when transformers refuses it
    config_field: ClassVar[str] = "encoder"

    def __init__(self, s: S, train: list[Sample], dirs: list[Path], eval_dirs: list[Path]):
        self.s, self.train, self.dirs, self.eval_dirs = s, train, dirs, eval_dirs
        self.model: Any = None
        self.processor: Any = None

    @staticmethod
    @abstractmethod
    def select(rec: dict[str, Any], family: str) -> bool:
        """Whether a training record of `family` is one of this expert's samples."""

    def vocabulary(self) -> None:  # noqa: B027 - an optional hook
        """Build tokenizers from the training texts (before torch is seeded)."""

    @abstractmethod
    def build(self) -> tuple[torch.nn.Module, Any]:
        """The model and its image processor (torch has just been seeded)."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook
        """Anything that needs the model, after the training images are loaded and before the
        optimizer is made (targets, held-out images, a measurement at initialisation)."""

    @abstractmethod
    def loss(
        self, idx: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float | None]]:
        """One batch (sample indices and their pixels): the loss to optimise and the values of
        the other curves."""

    def after_step(self) -> None:  # noqa: B027 - an optional hook
        """Runs after each optimizer step."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The held-out measurement: the log's "eval"."""

    @abstractmethod
    def save(self, out: Path) -> None:
        """Write the checkpoint into the existing folder `out`."""

    @abstractmethod
    def facts(self, train_images: int) -> dict[str, Any]:
        """The log's entries between "data" and "params"."""

    @abstractmethod
    def params(self) -> dict[str, int]:
        """Parameter counts per part, the log's "params"."""


def train_expert(
    recipe: type[Recipe],
    data_dirs: list[str | Path],
    out: str | Path,
    settings: Settings | dict | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
    eval_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train `recipe`'s expert on the records of `data_dirs`, save it to `out`, return its log.

    The held-out measurement reads the test split of `eval_dirs` (default: the data dirs).
    """
    cls = recipe.settings_class
    s = settings if isinstance(settings, cls) else parse_settings(cls, settings)
    dirs, out = [Path(d) for d in data_dirs], Path(out)
    held_out = [Path(d) for d in eval_dirs] if eval_dirs is not None else dirs
    t0 = time.perf_counter()
    with torch_threads(s.threads):
        train = collect_samples(dirs, s.families, "train", recipe.select)
        require_samples(train, dirs, f"{recipe.samples} of {','.join(s.families)}")
        job = recipe(s, train, dirs, held_out)
        job.vocabulary()
        torch.manual_seed(s.seed)
        job.model, job.processor = _build(job)
        job.model.train()
        paths, where = unique_images(train)
        pixels = load_pixels(paths, job.processor, progress)
        job.prepare()
        t_train = time.perf_counter()
        log = _fit(job, pixels, torch.tensor(where), progress, callback)
        train_secs = time.perf_counter() - t_train
        evals = job.evaluate()
        out.mkdir(parents=True, exist_ok=True)
        job.save(out)
    result = {
        "expert": recipe.name,
        "settings": s.model_dump(),
        "data": [str(d) for d in dirs],
        **job.facts(len(paths)),
        "params": job.params(),
        "read_layer": recipe.read_layer,
        **{f"final_{k}": sum(log[k][-20:]) / len(log[k][-20:]) for k in recipe.finals},
        "train_seconds": train_secs,
        "total_seconds": time.perf_counter() - t0,
        "eval": evals,
        **{f"{k}_curve": log[k] for k in recipe.curves},
    }
    write_json_atomic(out / "training_log.json", result)
    return result


def _build(job: Recipe) -> tuple[torch.nn.Module, Any]:
    """job.build(), with a model config that transformers or polyvis' own schema refuses as one
    ConfigError naming the recipe's config settings, rather than a traceback."""
    from pydantic import ValidationError

    try:
        return job.build()
    except ValidationError as err:  # polyvis' EncoderSpec: always the encoder's config
        raise config_error_from(err, "encoder") from None
    except config_refusals() as err:
        if isinstance(err, PolyVisError):  # already one line naming its field
            raise
        raise ConfigError(job.config_field, config_message(err)) from None


def _fit(
    job: Recipe,
    pixels: torch.Tensor,
    where: torch.Tensor,
    progress: bool,
    callback: StepCallback | None,
) -> dict[str, list]:
    """The optimizer steps; returns the curves. `where[i]` is sample i's row of `pixels`."""
    return adamw_steps(
        job.model,
        len(job.train),
        job.s,
        job.name,
        lambda idx: job.loss(idx, pixels[where[idx]]),
        progress,
        callback,
        curves=job.curves,
        after_step=job.after_step,
    )
