"""The feature cache: frozen encoders' outputs computed once per image and kept on disk.

With frozen encoders, every epoch recomputes the same features; the cache computes them once.
Each encoder has its own fingerprint (a hash of its config entry, image processor settings and
weights: what decides its features, not where it was loaded from), so changing one encoder's
layers, image size or weights misses its cache and never reuses stale features, an align run and
the finetune run started from it share one store, and the other encoders' features are kept in
`<cache_root()>/features/<fingerprint>/` (a FeatureStore: shards and their index).

Features are computed with the encoder in eval mode, in its own dtype (no autocast). A tiled
encoder's features of an image are (views, N, D), NaN in the views the image does not use (as
the model's own encoder pass gives them, models/tiling.py); its tiling is part of its config
entry, so the fingerprint, and with it the cache, is keyed by the tiling.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from polyvis.config import Config
from polyvis.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from polyvis.errors import ConfigError
from polyvis.paths import cache_root
from polyvis.train.feature_store import FORMAT, FeatureStore

logger = logging.getLogger(__name__)


def features_root() -> Path:
    """`<cache_root()>/features` (POLYVIS_CACHE moves the whole cache)."""
    return cache_root() / "features"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of a module's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update((t.to(torch.uint8) if t.dtype == torch.bool else t).view(torch.uint8).numpy())
    return h.hexdigest()


def encoder_fingerprint(model: Any, processor: Any, k: int) -> str:
    """Fingerprint of encoder k: what decides its features, hashed (20 hex digits). The weights'
    digest identifies the checkpoint, so the same weights loaded from another folder (a run
    started from an align run) hit the same store."""
    entry = model.config.encoders[k]
    desc = {
        "format": FORMAT,
        "entry": entry,  # backbone config, layers, num_prefix_tokens, grid, image size, tiling
        "image_processor": processor.image_processors[entry["name"]].to_dict(),
        "weights": weights_digest(model.encoders[k]),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


class FeatureCache:
    """The cached features of all encoders of a model (one FeatureStore each)."""

    def __init__(self, stores: list[FeatureStore], fingerprints: list[str]):
        self.stores = stores
        self.fingerprints = fingerprints
        # each readable image's hash as `fill` read it: the training data then need not read
        # every image file again only to name its features
        self.path_hashes: dict[Path, str] = {}
        # why `fill` could not decode an image, by its hash: the skip warning names the file
        self.unreadable: dict[str, str] = {}
        # images (with repeats) whose features batch_features read, and those it encoded
        self.served = {"read": 0, "encoded": 0}

    @classmethod
    def for_model(
        cls,
        model: Any,
        processor: Any,
        root: str | Path | None = None,
    ) -> FeatureCache:
        """The cache of this model's encoders under `root` (default: features_root())."""
        root = Path(root) if root is not None else features_root()
        stores, fps = [], []
        for k, entry in enumerate(model.config.encoders):
            fp = encoder_fingerprint(model, processor, k)
            meta = {"format": FORMAT, "encoder": entry["name"], "layers": entry["layers"], "grid": entry["grid"],
                    "dim": entry["dim"], "image_size": entry["image_size"]}  # fmt: skip
            if entry.get("tiling"):
                meta["tiling"] = entry["tiling"]
            stores.append(FeatureStore(root / fp, len(entry["layers"]), meta))
            fps.append(fp)
        return cls(stores, fps)

    def reload(self) -> None:
        for s in self.stores:
            s.reload()

    def covers(self, image_hash: str) -> bool:
        return all(image_hash in s for s in self.stores)

    def covered(self) -> frozenset[str]:
        """Hashes of the images whose features every encoder has."""
        sets = [set(s.index) for s in self.stores]
        return frozenset(set.intersection(*sets)) if sets else frozenset()

    def lookup(
        self, image_hashes: list[str], device: torch.device | str | None = None
    ) -> list[list[torch.Tensor]]:
        """Features of these images, in order: per encoder, per layer, (n, N, D) on `device`
        ((n, views, N, D) for a tiled encoder)."""
        out = []
        for store in self.stores:
            per_image = [store.get(h) for h in image_hashes]
            out.append(
                [torch.stack([f[i] for f in per_image]).to(device) for i in range(store.num_layers)]
            )
        return out

    @torch.no_grad()
    def fill(
        self,
        model: Any,
        processor: Any,
        image_paths: Iterable[str | Path],
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
    ) -> dict[str, int]:
        """Compute and store the features every encoder still lacks for these images.

        Each file is read once (its bytes give the hash and, on a miss, the image). Unreadable
        images are left out (training skips their records). Returns counts: images (distinct),
        computed (encoder runs, per image and encoder), unreadable.
        """
        seen: set[str] = set()
        todo: list[tuple[str, Any]] = []
        stats = {"images": 0, "computed": 0, "unreadable": 0}
        paths = list(dict.fromkeys(Path(p) for p in image_paths))
        for path in _track(paths, "caching features", progress):
            try:
                data = path.read_bytes()
            except OSError:
                stats["unreadable"] += 1
                continue
            # The key the dataset gives the image (polyvis.data.images.image_hash).
            digest = hashlib.sha1(data).hexdigest()
            self.path_hashes[path] = digest
            if digest in seen:
                continue
            seen.add(digest)
            if not self.covers(digest):
                try:
                    todo.append((digest, decode_image(data, path, max_pixels)))
                except ImageError as err:
                    self.unreadable[digest] = str(err)
                    stats["unreadable"] += 1
                    seen.discard(digest)
                    del self.path_hashes[path]
                    continue
            if len(todo) >= batch_size:
                stats["computed"] += self._compute(model, processor, todo)
                todo = []
        if todo:
            stats["computed"] += self._compute(model, processor, todo)
        self.flush()
        stats["images"] = len(seen)
        return stats

    def _compute(self, model: Any, processor: Any, todo: list[tuple[str, Any]]) -> int:
        hashes = [h for h, _ in todo]
        pixels = processor.preprocess_images([im for _, im in todo])
        done = 0
        for k, (store, enc) in enumerate(zip(self.stores, model.encoders)):
            need = [i for i, h in enumerate(hashes) if h not in store]
            if not need:
                continue
            param = next(enc.parameters())
            x = pixels[need].to(param.device)
            was_training = enc.training
            enc.eval()  # features of the encoder as inference sees it (no dropout)
            feats = model.encode_with(k, x)  # its own slot(s), cropped to its size
            enc.train(was_training)
            for j, i in enumerate(need):
                store.put(hashes[i], [f[j] for f in feats])
            done += len(need)
        return done

    @torch.no_grad()
    def batch_features(
        self, model: Any, processor: Any, images: list[Any], image_hashes: list[str]
    ) -> list[list[torch.Tensor]]:
        """One batch's features (decoded images and their files' hashes, in order), for
        evaluation: read from the cache when every encoder has every image; else the model's own
        pass over the whole batch, so that its numbers are those of an uncached pass over the
        same batch, and the images the cache lacked are queued into it (`flush` writes them)."""
        if not all(self.covers(h) for h in image_hashes):
            self.reload()  # runs scored beside this one may have stored them since
        if all(self.covers(h) for h in image_hashes):
            self.served["read"] += len(image_hashes)
            return self.lookup(image_hashes, model.device)
        self.served["encoded"] += len(image_hashes)
        pixels = processor.preprocess_images(images).to(model.device, model.dtype)
        feats = model.encode_images(pixels)
        for store, layers in zip(self.stores, feats):
            for j, h in enumerate(image_hashes):
                if h not in store:
                    store.put(h, [f[j] for f in layers])
        return feats

    def flush(self) -> None:
        for s in self.stores:
            s.flush()

    def wrap(self, dataset: Dataset) -> CoveredDataset:
        """The dataset, with records whose images the cache lacks skipped (None)."""
        return CoveredDataset(dataset, self.covered(), self.unreadable)


class CoveredDataset(Dataset):
    """Items of a (decode_images=False) ConversationDataset whose images are all cached.

    An image missing from the cache was unreadable when the cache was filled (or is new): its
    record becomes None, which the Collator drops and the training loop counts as skipped.
    """

    def __init__(
        self, dataset: Dataset, covered: frozenset[str], unreadable: dict[str, str] | None = None
    ):
        self.dataset = dataset
        self.covered = covered
        self.unreadable = unreadable or {}
        self._warned: set[Any] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        item = self.dataset[i]
        if item is None:
            return None
        missing = [h for h in item["image_hashes"] if h not in self.covered]
        if missing:
            if item["id"] not in self._warned:
                self._warned.add(item["id"])
                why = self.unreadable.get(missing[0])
                logger.warning(
                    "skipping record %s: %s",
                    item["id"],
                    why or f"image {missing[0]} is not in the feature cache",
                )
            return None
        return item


def _track(items: list, what: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=what)


# -- from a config ---------------------------------------------------------------------------------
def check_cacheable(cfg: Config, model: Any | None = None) -> None:
    """The cache needs frozen encoders: their features must not change while training."""
    trained = cfg.train.unfreeze_encoders
    if model is not None and any(p.requires_grad for p in model.encoders.parameters()):
        trained = True
    if trained:
        raise ConfigError(
            "train.cache_features",
            "needs frozen encoders, but train.unfreeze_encoders is true (trained encoders' features change every step)",
        )


def config_image_paths(cfg: Config, processor: Any) -> list[Path]:
    """Every image of the train and val records files (synthetic families included)."""
    from polyvis.data.dataset import ConversationDataset
    from polyvis.train.data import data_files

    paths: list[Path] = []
    for split in ("train", "val"):
        files = data_files(cfg, split)
        if files:
            ds = ConversationDataset(
                files, processor, cfg.data.max_length, image_root=cfg.data.image_root
            )
            paths += [p for i in range(len(ds)) for p in ds.image_paths(i)]
    return paths


def fill_for_config(
    cfg: Config,
    model: Any,
    processor: Any,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[FeatureCache, dict[str, int]]:
    """Fill the cache of this model's encoders with every train and val image of the config."""
    check_cacheable(cfg)
    cache = FeatureCache.for_model(model, processor)
    if device is not None:
        model.encoders.to(device)
    stats = cache.fill(model, processor, config_image_paths(cfg, processor), progress=progress)
    return cache, stats


def prepare_feature_cache(
    cfg: Config, model: Any, processor: Any, accelerator: Any, progress: bool = True
):
    """For train(): None without train.cache_features; else the filled cache (the main process
    fills it, the others wait and read it)."""
    if not cfg.train.cache_features:
        return None
    check_cacheable(cfg, model)
    if accelerator.is_main_process:
        cache, stats = fill_for_config(cfg, model, processor, accelerator.device, progress)
        if progress and stats["computed"]:
            print(
                f"feature cache: computed {stats['computed']} encoder feature set(s) for {stats['images']} images"
            )
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        cache = FeatureCache.for_model(model, processor)
    return cache
