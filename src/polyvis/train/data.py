"""Training data: records files named in the config, or synthetic families generated once."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Sampler

from polyvis.config import Config
from polyvis.data.synthetic.cache import SYNTH_DEFAULTS, ensure_synthetic
from polyvis.errors import ConfigError


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
