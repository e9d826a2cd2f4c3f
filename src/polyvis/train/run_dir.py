"""A run directory across invocations: whether a config may continue the run in it, and where
`train.init_from` starts from (a model directory, or a run's final model) with the model
section recorded there."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from polyvis.config import Config, config_to_dict, load_config
from polyvis.errors import ConfigError, PolyVisError
from polyvis.train.checkpoint import latest_checkpoint

# Config parts that must match for a run directory to be resumed.
_RESUME_KEYS = ("model", "data")
# Train settings that shape the batches: a checkpointed run continues only with the same ones.
_RESUME_TRAIN_KEYS = ("stage", "lora", "batch_size", "grad_accum", "seed")
# Train settings that change how a run is kept or computed, not what it learns: a finished run
# is reused whatever they are (init_from is compared through the model it records instead).
_HOW_NOT_WHAT = (
    "save_every",
    "keep_last",
    "eval_every",
    "cache_features",
    "num_workers",
    "gradient_checkpointing",
    "init_from",
)


def same_settings(old: Any, new: Any) -> bool:
    """Config values equal, a path written relative in one and absolute in the other counting
    as the same (relative to the current folder): a run configured with a relative folder (an
    old --out, a relative POLYVIS_CACHE) stays reusable now that those are written absolute."""
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(same_settings(old[k], new[k]) for k in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(same_settings, old, new))
    if isinstance(old, str) and isinstance(new, str) and old != new:
        return bool(old and new) and os.path.abspath(old) == os.path.abspath(new)
    return old == new


def _trained(run: Path) -> bool:
    """Whether the run directory holds training to continue or keep: a checkpoint or its end."""
    return latest_checkpoint(run) is not None or (run / "done.json").is_file()


def check_resumable(run: Path, cfg: Config) -> None:
    """A ConfigError unless `cfg` may continue the run in `run`: its model, data and the train
    settings that shape the batches match the run's config.yaml, and, once the run is finished,
    every train setting that changes what it learns (its steps, rates, schedule) too, since a
    finished run is kept, not trained again."""
    saved = run / "config.yaml"
    # a run that failed before its first checkpoint (a wrong path, a LoRA typo) has nothing to
    # resume: the corrected command takes its place instead of being refused
    if not saved.is_file() or not _trained(run):
        return
    import yaml

    old = yaml.safe_load(saved.read_text())
    new = config_to_dict(cfg)
    for key in _RESUME_KEYS:
        if not same_settings(old.get(key), new.get(key)):
            raise ConfigError(
                key, f"differs from the config of the run in {run}; use a new --out to start over"
            )
    finished = (run / "done.json").is_file()
    old_train, new_train = old.get("train", {}), new["train"]
    keys = (
        sorted((old_train.keys() | new_train.keys()) - set(_HOW_NOT_WHAT))
        if finished
        else _RESUME_TRAIN_KEYS
    )
    for key in keys:
        if not same_settings(old_train.get(key), new_train.get(key)):
            what = "the finished run" if finished else "the run"
            raise ConfigError(
                f"train.{key}",
                f"{new_train.get(key)!r} differs from {what} in {run} ({old_train.get(key)!r}); "
                "use a new --out to start over",
            )


def init_dir_of(cfg: Config) -> Path | None:
    """The model directory train.init_from names (a run directory: its final model), or None."""
    if not cfg.train.init_from:
        return None
    src = Path(cfg.train.init_from)
    if (src / "final").is_dir():  # a run directory: start from its final model
        src = src / "final"
    if not (src / "config.json").is_file():
        raise ConfigError(
            "train.init_from", f"{src} is neither a model directory nor a finished run"
        )
    return src


def model_of_init(cfg: Config, init_dir: Path) -> tuple[Config, list[str]]:
    """`cfg` with the `model` section of the model train.init_from starts from (its
    polyvis.yaml), and the config's `model` fields that differ from it, which training does not
    use: the weights and architecture come from init_from. Unchanged without a polyvis.yaml."""
    recorded = init_dir / "polyvis.yaml"
    if not recorded.is_file():
        return cfg, []
    try:
        init_model = load_config(recorded).model
    except PolyVisError:  # written by another version: nothing to compare with
        return cfg, []
    mine = cfg.model.model_dump(mode="json", exclude_none=True)
    theirs = init_model.model_dump(mode="json", exclude_none=True)
    keys = mine.keys() | theirs.keys()
    differ = sorted(k for k in keys if not same_settings(mine.get(k), theirs.get(k)))
    return cfg.model_copy(update={"model": init_model}), differ


def check_reusable(run: Path, cfg: Config) -> None:
    """check_resumable for a run not launched yet (an ablation's planned run): `cfg` is first
    made what training records in config.yaml, the model train.init_from starts from and
    measured `scales: auto`, without measuring anything: a run without init_from is compared
    with the scales it measured (so a changed scale_images or scale_reference goes unseen)."""
    saved = run / "config.yaml"
    if not saved.is_file() or not _trained(run):
        return
    from polyvis.config import AUTO
    from polyvis.train.scales import resolve_scales, with_scales

    init_dir = init_dir_of(cfg)
    if cfg.model.fusion.get("scales") == AUTO:
        if init_dir is not None:
            cfg = resolve_scales(cfg, json.loads((init_dir / "config.json").read_text()))
        else:
            import yaml

            recorded = (yaml.safe_load(saved.read_text()).get("model") or {}).get("fusion") or {}
            cfg = with_scales(cfg, recorded.get("scales"))
    if init_dir is not None:
        cfg, _ = model_of_init(cfg, init_dir)
    check_resumable(run, cfg)
