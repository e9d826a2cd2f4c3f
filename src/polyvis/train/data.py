"""Training data: records files named in the config, or synthetic families generated once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from polyvis.config import Config
from polyvis.data.records import not_a_records_file
from polyvis.data.synthetic.cache import SYNTH_DEFAULTS, ensure_synthetic
from polyvis.errors import ConfigError


def data_files(cfg: Config, split: str) -> list[Path]:
    """The records files of a split: data.<split>, plus the synthetic families' files."""
    files = [Path(f) for f in getattr(cfg.data, split)]
    for i, f in enumerate(files):
        if not f.is_file():
            raise ConfigError(f"data.{split}[{i}]", not_a_records_file(f))
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


def check_max_length(cfg: Config, processor: Any) -> None:
    """data.max_length must hold one image block (truncation never cuts one): checked once up
    front, instead of a warning per record and an epoch of loaded images before failing."""
    from polyvis.models.tokenizer import IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

    # with a tiled encoder (tokens per image vary) this is the smallest block: one view
    block = IMAGE_START_TOKEN + IMAGE_TOKEN * processor.image_seq_length + IMAGE_END_TOKEN
    tokens = len(processor.tokenizer(block, add_special_tokens=False)["input_ids"])
    if cfg.data.max_length < tokens:
        raise ConfigError(
            "data.max_length",
            f"{cfg.data.max_length} is less than the {tokens} tokens of one image block",
        )


_SKIPPED = "skipped_id"


class _NamedSkips(torch.utils.data.Dataset):
    """A dataset whose skipped items (None) say which record they were, so the loop counts
    distinct records rather than every epoch's encounter with them."""

    def __init__(self, dataset, ids: list[Any]):
        self.dataset = dataset
        self.ids = ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        return item if item is not None else {_SKIPPED: self.ids[i]}


class _SkipCollator:
    """The Collator, with the batch's skipped record ids as `skipped_ids`."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [x[_SKIPPED] for x in items if _SKIPPED in x]
        batch = self.collator([None if _SKIPPED in x else x for x in items])
        batch["skipped_ids"] = skipped
        return batch


def make_loader(
    cfg: Config, processor: Any, split: str, shuffle: bool, cache: Any = None
) -> tuple[DataLoader | None, EpochSampler | None]:
    """The split's loader (records skipped by the dataset named in each batch's `skipped_ids`)
    and its sampler; (None, None) when the split has no records."""
    from polyvis.data.collate import Collator
    from polyvis.data.dataset import ConversationDataset

    files = data_files(cfg, split)
    if not files:
        return None, None
    ds = ConversationDataset(
        files,
        processor,
        max_length=cfg.data.max_length,
        image_root=cfg.data.image_root,
        decode_images=cache is None,
        image_hashes=cache.path_hashes if cache is not None else None,
    )
    ids = [rec["id"] for rec in ds.records]
    if cache is not None:  # items carry image hashes only; features come from the cache
        ds = cache.wrap(ds)
    if len(ds) == 0:
        return None, None
    ds = _NamedSkips(ds, ids)
    sampler = EpochSampler(len(ds), cfg.train.seed, shuffle=shuffle)
    loader = DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        collate_fn=_SkipCollator(Collator(processor.tokenizer.pad_token_id)),
        num_workers=cfg.train.num_workers,
        # workers live for the whole run: forking new ones every epoch stalled its first steps
        persistent_workers=cfg.train.num_workers > 0,
        drop_last=shuffle and len(ds) >= cfg.train.batch_size,
    )
    return loader, sampler
