"""Synthetic families generated once per setting into the cache, and reused after that."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError
from polyvis.paths import atomic_dir, cache_root

SYNTH_DEFAULTS: dict[str, Any] = {"families": ["scene", "ocr"], "n": 200, "seed": 0, "size": 64}
# Part of the cache key: bump it when a generator writes something else for the same options, so
# no stale set is reused (docs/data.md lists what each version changed).
SYNTH_VERSION = 7


def synthetic_dir(options: dict[str, Any]) -> Path:
    """The cache folder of these generator options (or `dir`, when given)."""
    opts = {**SYNTH_DEFAULTS, **options}
    if "dir" in opts:
        return Path(opts["dir"])
    keyed = {**opts, "version": SYNTH_VERSION}
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "data" / f"synth-{key}"


def ensure_synthetic(options: dict[str, Any], progress: bool = True, workers: int = 1) -> Path:
    """Generate the synthetic families once; later runs with the same settings reuse them.

    `splits` ({split: fraction}, e.g. {"test": 1.0} for a test-only set) is part of the key only
    when given, so the default 80/10/10 sets keep their folders."""
    from polyvis.data.synthetic.generate import generate

    opts = {**SYNTH_DEFAULTS, **options}
    unknown = set(opts) - set(SYNTH_DEFAULTS) - {"dir", "difficulty", "splits"}
    if unknown:
        raise ConfigError(f"data.synthetic.{sorted(unknown)[0]}", "unknown option")
    out = synthetic_dir(opts)
    if (out / "manifest.json").is_file():
        return out
    # a cache folder without its manifest (a copy cut short) is replaced; a user's own `dir`
    # never is: it may hold anything
    complete = None if "dir" in opts else (lambda p: (p / "manifest.json").is_file())
    with atomic_dir(out, complete=complete) as tmp:
        generate(
            list(opts["families"]),
            int(opts["n"]),
            int(opts["seed"]),
            tmp,
            image_size=int(opts["size"]),
            difficulty=opts.get("difficulty", "medium"),
            workers=workers,
            progress=progress,
            **({"splits": opts["splits"]} if "splits" in opts else {}),
        )
    return out
