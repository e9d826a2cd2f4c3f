"""A run directory across invocations: whether a config may continue the run in it, and where
`train.init_from` starts from (a model directory, or a run's final model) with the model
section recorded there."""

from __future__ import annotations

from pathlib import Path

from polyvis.config import Config, config_to_dict, load_config
from polyvis.errors import ConfigError, PolyVisError
from polyvis.train.checkpoint import latest_checkpoint

# Config parts that must match for a run directory to be resumed.
_RESUME_KEYS = ("model", "data")


def _trained(run: Path) -> bool:
    """Whether the run directory holds training to continue or keep: a checkpoint or its end."""
    return latest_checkpoint(run) is not None or (run / "done.json").is_file()


def check_resumable(run: Path, cfg: Config) -> None:
    """A ConfigError unless `cfg` may continue the run in `run` (its model, data and the train
    settings that shape the batches match the run's config.yaml)."""
    saved = run / "config.yaml"
    # a run that failed before its first checkpoint (a wrong path, a LoRA typo) has nothing to
    # resume: the corrected command takes its place instead of being refused
    if not saved.is_file() or not _trained(run):
        return
    import yaml

    old = yaml.safe_load(saved.read_text())
    new = config_to_dict(cfg)
    for key in _RESUME_KEYS:
        if old.get(key) != new.get(key):
            raise ConfigError(
                key, f"differs from the config of the run in {run}; use a new --out to start over"
            )
    for key in ("stage", "lora", "batch_size", "grad_accum", "seed"):
        if old.get("train", {}).get(key) != new["train"].get(key):
            raise ConfigError(
                f"train.{key}", f"differs from the run in {run}; use a new --out to start over"
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
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    return cfg.model_copy(update={"model": init_model}), differ
