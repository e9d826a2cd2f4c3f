"""Training data: records files named in the config, or synthetic families generated once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from polyvis.config import Config
from polyvis.errors import ConfigError

SYNTH_DEFAULTS: dict[str, Any] = {"families": ["scene", "ocr"], "n": 200, "seed": 0, "size": 64}
# Part of the cache key: bump it when a generator changes what it writes for the same options
# (2: the mixed family's "Read the signs." transcription; 3: its easy level names signs by
# place and asks "describe"; 4: easy has one sign, the two stacked ones moved to medium; 5: a
# larger easy sign; 6: an easy table's cells each as large as they fit; 7: mixed describe asks
# for the word, then the colour), so no stale set is reused.
SYNTH_VERSION = 7


def cache_root() -> Path:
    """Where generated data and pretrained nano experts are kept (POLYVIS_CACHE overrides)."""
    return Path(os.environ.get("POLYVIS_CACHE", Path.home() / ".cache" / "polyvis"))


def synthetic_dir(options: dict[str, Any]) -> Path:
    opts = {**SYNTH_DEFAULTS, **options}
    if "dir" in opts:
        return Path(opts["dir"])
    keyed = {**opts, "version": SYNTH_VERSION}
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "data" / f"synth-{key}"


def ensure_synthetic(options: dict[str, Any], progress: bool = True, workers: int = 1) -> Path:
    """Generate the synthetic families once; later runs with the same settings reuse them."""
    from polyvis.data.synthetic import generate

    opts = {**SYNTH_DEFAULTS, **options}
    unknown = set(opts) - set(SYNTH_DEFAULTS) - {"dir", "difficulty"}
    if unknown:
        raise ConfigError(f"data.synthetic.{sorted(unknown)[0]}", "unknown option")
    out = synthetic_dir(opts)
    if (out / "manifest.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    generate(
        list(opts["families"]),
        int(opts["n"]),
        int(opts["seed"]),
        tmp,
        image_size=int(opts["size"]),
        difficulty=opts.get("difficulty", "medium"),
        workers=workers,
        progress=progress,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another process generated it first
        os.replace(tmp, out)
    return out


def data_files(cfg: Config, split: str) -> list[Path]:
    """The records files of a split: data.<split>, plus the synthetic families' files."""
    files = [Path(f) for f in getattr(cfg.data, split)]
    for i, f in enumerate(files):
        if not f.is_file():
            raise ConfigError(f"data.{split}[{i}]", f"{f}: records file not found")
    if cfg.data.synthetic is not None:
        root = ensure_synthetic(cfg.data.synthetic)
        fams = cfg.data.synthetic.get("families", SYNTH_DEFAULTS["families"])
        files += [
            root / fam / f"{split}.jsonl"
            for fam in fams
            if (root / fam / f"{split}.jsonl").is_file()
        ]
    return files


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): the data position is exactly resumable."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
