"""Pieces the nano experts share: settings, records -> pixels, LR schedule, batches, small helpers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from polyvis.errors import ConfigError, DataError, config_error_from
from polyvis.progress import progress_bar

S = TypeVar("S", bound=BaseModel)

# The progress bars' extra column while training: the smoothed loss.
LOSS_FIELD = "loss {task.fields[loss]:.4f}"


class Settings(BaseModel):
    """Base of the trainers' settings: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid")


class ExpertSettings(Settings):
    """Settings every nano expert's trainer takes."""

    # bf16: the training steps autocast to bfloat16, attention kept in float32 (faster on a CPU
    # with AVX512-BF16: docs/performance.md); fp32, the default, keeps the experts' cache keys
    precision: Literal["fp32", "bf16"] = "fp32"


def parse_settings(cls: type[S], data: dict[str, Any] | None, prefix: str = "") -> S:
    """Validate a settings dict; the first problem becomes a ConfigError naming its field
    (`prefix.field`, e.g. settings.vary-nano.steps)."""
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as err:
        raise config_error_from(err, prefix) from None


def read_mapping(text: str | None, field: str) -> dict[str, Any] | None:
    """A JSON / YAML mapping given inline or as a file path (the CLI's --config / --decoder)."""
    if text is None:
        return None
    path = Path(text)
    if path.suffix in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(field, f"{path}: file not found")
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as err:
        raise ConfigError(field, f"not valid JSON / YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(field, "must be a mapping (e.g. {model_type: vit, hidden_size: 128})")
    return data


@dataclass
class Sample:
    """One training example: an image file, the text that goes with it, and where it came from."""

    image: Path
    text: str
    family: str
    rid: str


def collect_samples(
    dirs: Sequence[str | Path],
    families: Sequence[str],
    split: str,
    keep: Callable[[dict[str, Any], str], bool],
) -> list[Sample]:
    """Records of `families` from DIR/{family}/{split}.jsonl in each data dir, filtered by `keep`."""
    from polyvis.data.records import read_records, record_image_paths

    out = []
    for d in dirs:
        for fam in families:
            path = Path(d) / fam / f"{split}.jsonl"
            if not path.is_file():
                continue
            for rec in read_records(path):
                family = rec.get("family", fam)
                images = record_image_paths(rec, path.parent)
                if len(images) != 1 or not keep(rec, family):
                    continue
                out.append(Sample(images[0], answer_of(rec), family, str(rec["id"])))
    return out


def answer_of(rec: dict[str, Any]) -> str:
    """The first answer of a record's conversation."""
    return rec["conversations"][1]["value"]


def question_of(rec: dict[str, Any]) -> str:
    """The first question without the image marker."""
    return rec["conversations"][0]["value"].replace("<image>", "").strip()


def require_samples(samples: list[Sample], dirs: Sequence[str | Path], what: str) -> None:
    if not samples:
        where = ", ".join(str(d) for d in dirs)
        raise DataError(f"{where}: no {what} found (looked for FAMILY/train.jsonl in each folder)")


def load_pixels(paths: Sequence[Path], processor: Any, progress: bool = False) -> torch.Tensor:
    """Every image once through the encoder's own processor: (N, 3, H, W) float32."""
    from polyvis.data.images import load_image

    chunks = []
    with progress_bar(progress) as bar:
        task = bar.add_task("loading images", total=len(paths), loss=float("nan"))
        for i in range(0, len(paths), 256):
            images = [load_image(p) for p in paths[i : i + 256]]
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"].float())
            bar.advance(task, len(images))
    return torch.cat(chunks) if chunks else torch.zeros(0)


def square_processor(size: int, mean: list[float], std: list[float]) -> Any:
    """A ViT image processor: resize to size x size, then normalise with mean and std."""
    try:
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc(size={"height": size, "width": size}, image_mean=mean, image_std=std)


def unique_images(samples: Sequence[Sample]) -> tuple[list[Path], list[int]]:
    """The distinct image files and, per sample, the index of its image among them."""
    index: dict[Path, int] = {}
    where = [index.setdefault(s.image, len(index)) for s in samples]
    return list(index), where


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to a tenth of the peak."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` index batches drawn epoch by epoch from seeded permutations of range(n)."""
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos : pos + min(batch_size, n)]
        pos += batch_size


# callback(step, total, smoothed loss) after each optimizer step (the experts' progress reports)
StepCallback = Callable[[int, int, float], None]


def adamw_steps(
    model: torch.nn.Module,
    n: int,
    s: Any,
    name: str,
    step_loss: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    progress: bool,
    callback: StepCallback | None,
    curves: Sequence[str] = ("loss",),
    after_step: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """The nano trainers' optimizer loop: AdamW (betas 0.9, 0.98) over `s.steps` seeded index
    batches of range(n) (`s`: lr, weight_decay, seed, batch_size, steps, warmup), `lr_at`'s
    schedule, gradients clipped at 1. `step_loss(indices)` gives the loss and any other curves'
    values; returns every curve, "loss" included."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98)
    )
    bf16 = getattr(s, "precision", "fp32") == "bf16"
    device = next(model.parameters()).device.type
    if bf16:
        from polyvis.models.attention import use_fp32_attention
        from polyvis.train.precision import warn_slow_cpu_bf16

        use_fp32_attention(model)
        if device == "cpu":
            warn_slow_cpu_bf16(f"{name}.precision")
    gen = torch.Generator().manual_seed(s.seed)
    log: dict[str, list[float]] = {k: [] for k in curves}
    with progress_bar(progress, fields=LOSS_FIELD) as bar:
        task = bar.add_task(name, total=s.steps, loss=float("nan"))
        for step, idx in enumerate(batches(n, s.batch_size, s.steps, gen)):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, s.steps, s.lr, s.warmup)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss, parts = step_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if after_step is not None:
                after_step()
            log["loss"].append(loss.item())
            for key, value in parts.items():
                log[key].append(value)
            shown = smooth(log["loss"][-20:])[-1]
            bar.update(task, advance=1, loss=shown)
            if callback is not None:
                callback(step + 1, s.steps, shown)
    return log


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore the caller's setting."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def smooth(values: Iterable[float], k: int = 20) -> list[float]:
    """Running mean over the last k values (the log's readable loss curve)."""
    out, window = [], []
    for v in values:
        window = (window + [v])[-k:]
        out.append(sum(window) / len(window))
    return out


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
