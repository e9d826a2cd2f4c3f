"""One encoder's cached features on disk: safetensors shards and the index that finds them.

    <directory>/
        meta.json                     what the fingerprint describes (for people)
        index.json                    image content hash -> shard number (written atomically)
        shard-00000.safetensors       tensors "<image hash>.<i>": the i-th selected layer, (N, D)

Shards are only ever added (each written atomically under a lock), so readers never see a
half-written one; see polyvis.train.feature_cache for what the directory's name fingerprints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from polyvis.paths import atomic_file, write_json_atomic

FORMAT = 1  # bump when the layout or the way features are computed changes
SHARD_BYTES = 256 * 2**20
_OPEN_SHARDS = 64  # safetensors handles kept open (memory-mapped) per encoder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two runs filling one cache never write the same shard)."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class FeatureStore:
    """One encoder's cached features: a directory of safetensors shards and their index."""

    def __init__(self, directory: str | Path, num_layers: int, meta: dict[str, Any] | None = None):
        self.dir = Path(directory)
        self.num_layers = int(num_layers)
        self.meta = meta or {}
        self.index: dict[str, int] = {}
        self._buffer: dict[str, torch.Tensor] = {}
        self._pending: set[str] = set()
        self._bytes = 0
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self.reload()

    def reload(self) -> None:
        """Re-read the index (another process may have added shards)."""
        path = self.dir / "index.json"
        self.index = (
            json.loads(path.read_text(encoding="utf-8"))["images"] if path.is_file() else {}
        )

    def __contains__(self, image_hash: str) -> bool:
        return image_hash in self.index or image_hash in self._pending

    def __len__(self) -> int:
        return len(self.index)

    def put(
        self, image_hash: str, features: list[torch.Tensor], shard_bytes: int = SHARD_BYTES
    ) -> None:
        """Queue one image's features (one (N, D) tensor per layer); full shards are written."""
        if len(features) != self.num_layers:
            raise ValueError(
                f"expected {self.num_layers} layer(s) of features, got {len(features)}"
            )
        for i, f in enumerate(features):
            t = f.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses views
            self._buffer[f"{image_hash}.{i}"] = t
            self._bytes += t.numel() * t.element_size()
        self._pending.add(image_hash)
        if self._bytes >= shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the queued features as one new shard, then add them to the index."""
        if not self._buffer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.dir / ".lock"):
            self.reload()
            # another process (a run scored beside this one) may have stored some meanwhile
            done = {h for h in self._pending if h in self.index}
            if done:
                self._buffer = {
                    k: t for k, t in self._buffer.items() if k.split(".")[0] not in done
                }
                self._pending -= done
            if not self._pending:
                self._buffer, self._bytes = {}, 0
                return  # nothing new: no shard of duplicates
            used = [int(p.stem.split("-")[1]) for p in self.dir.glob("shard-*.safetensors")]
            n = max(used, default=-1) + 1
            with atomic_file(self.dir / f"shard-{n:05d}.safetensors") as tmp:
                save_file(self._buffer, str(tmp), metadata={"format": str(FORMAT)})
            self.index.update({h: n for h in self._pending})
            if not (self.dir / "meta.json").is_file():
                write_json_atomic(self.dir / "meta.json", self.meta, indent=None)
            index = {"format": FORMAT, "images": self.index}
            write_json_atomic(self.dir / "index.json", index, indent=None)
        self._buffer, self._pending, self._bytes = {}, set(), 0

    def _shard(self, n: int) -> Any:
        if n in self._handles:
            self._handles.move_to_end(n)
            return self._handles[n]
        handle = safe_open(str(self.dir / f"shard-{n:05d}.safetensors"), framework="pt")
        self._handles[n] = handle
        if len(self._handles) > _OPEN_SHARDS:
            self._handles.popitem(last=False)
        return handle

    def get(self, image_hash: str) -> list[torch.Tensor]:
        """One image's features: one (N, D) tensor per selected layer (queued ones included)."""
        if image_hash in self._pending:
            return [self._buffer[f"{image_hash}.{i}"] for i in range(self.num_layers)]
        shard = self._shard(self.index[image_hash])
        return [shard.get_tensor(f"{image_hash}.{i}") for i in range(self.num_layers)]
