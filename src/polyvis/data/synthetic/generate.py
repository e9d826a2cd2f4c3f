"""Generate synthetic datasets: render images (optionally in parallel), write records + manifest.

Layout under `out`:
    manifest.json                       families, counts, seed, options
    {family}/{split}.jsonl              records; image paths relative to {family}/
    {family}/images/{split}/NNNNNN.png
    scene/annotations/{split}.json      the scene family's COCO instances
Every image is drawn from its own generator seeded by (seed, family, split, index), so the bytes
written do not depend on the number of workers or on the order the images are rendered in.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyvis import __version__
from polyvis.data.records import check_records, write_records
from polyvis.data.synthetic.base import FAMILIES, image_rel_path
from polyvis.data.synthetic.common import item_rng, parse_difficulty
from polyvis.errors import ConfigError
from polyvis.progress import progress_bar

SPLIT_NAMES = ("train", "val", "test")
_PNG = re.compile(r"^\d{6}\.png$")


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Split n items by fractions (largest remainder: sizes sum to n, ties go to earlier splits)."""
    exact = {k: n * f for k, f in fractions.items()}
    sizes = {k: math.floor(v) for k, v in exact.items()}
    left = n - sum(sizes.values())
    for k in sorted(exact, key=lambda k: -(exact[k] - sizes[k]))[:left]:
        sizes[k] += 1
    return sizes


MAX_IMAGE_SIZE = 4096
MAX_N = 10_000_000


def _check_args(
    families: Sequence[str] | str,
    n: int,
    seed: int,
    image_size: int,
    difficulty: str | int | Mapping[str, str | int],
    splits: Sequence[float] | Mapping[str, float],
    workers: int,
) -> tuple[list[str], dict[str, str], dict[str, float]]:
    fams = [f.strip() for f in families.split(",")] if isinstance(families, str) else list(families)
    fams = [f for f in fams if f]
    if not fams:
        raise ConfigError("families", f"empty; valid: {', '.join(FAMILIES.names())}")
    for f in fams:
        if f not in FAMILIES:
            raise ConfigError(
                "families", f"unknown family {f!r}; valid: {', '.join(FAMILIES.names())}"
            )
    if len(set(fams)) != len(fams):
        raise ConfigError("families", "a family is listed twice")
    for name, value, lo in (
        ("n", n, 1),
        ("seed", seed, 0),
        ("image_size", image_size, 16),
        ("workers", workers, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ConfigError(name, f"must be an integer >= {lo}, got {value!r}")
    # pages are twice the size, and 8192 x 8192 is the most load_image reads (DEFAULT_MAX_PIXELS)
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError("image_size", f"must be at most {MAX_IMAGE_SIZE}, got {image_size}")
    if n > MAX_N:  # the job list alone would take gigabytes before one image is drawn
        raise ConfigError("n", f"must be at most {MAX_N} a family, got {n}")
    if isinstance(difficulty, Mapping):
        unknown = [k for k in difficulty if k not in fams]
        if unknown:
            raise ConfigError("difficulty", f"{unknown[0]!r} is not one of the families generated")
        levels = {f: parse_difficulty(difficulty.get(f, "medium"), f"difficulty.{f}") for f in fams}
    else:
        levels = {f: parse_difficulty(difficulty) for f in fams}
    if isinstance(splits, Mapping):
        fractions = {str(k): float(v) for k, v in splits.items()}
    else:
        if len(splits) != len(SPLIT_NAMES):
            raise ConfigError("splits", f"give {len(SPLIT_NAMES)} fractions (train, val, test)")
        fractions = dict(zip(SPLIT_NAMES, (float(s) for s in splits)))
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ConfigError("splits", f"fractions must be >= 0 and sum to 1, got {fractions}")
    return fams, levels, fractions


def _render_one(job: tuple[str, str, int, int, int, str, str]) -> tuple[str, str, int, dict]:
    """Render and save one image (runs in a worker); returns its ground truth."""
    family, split, index, seed, size, level, out = job
    cls = FAMILIES.get(family)
    item = cls().render(item_rng(seed, family, split, index), size, level)
    img, page = item.image, cls.page_size(size)
    if img.size != page or img.mode != "RGB":
        raise RuntimeError(f"family {family} drew a {img.mode} {img.size} image, not RGB {page}")
    path = Path(out) / family / image_rel_path(split, index)
    img.save(path, format="PNG", compress_level=1)  # 3-4x faster than 6 on noisy images
    return family, split, index, item.meta


def _clean(folder: Path, split: str) -> None:
    """Remove what an earlier run wrote for this split (only files of our own layout)."""
    for stale in (folder / f"{split}.jsonl", folder / "annotations" / f"{split}.json"):
        stale.unlink(missing_ok=True)
    img_dir = folder / "images" / split
    if img_dir.is_dir():
        for p in img_dir.iterdir():
            if _PNG.match(p.name):
                p.unlink()


def generate(
    families: Sequence[str] | str,
    n: int,
    seed: int,
    out: str | Path,
    image_size: int = 64,
    difficulty: str | int | Mapping[str, str | int] = "medium",
    splits: Sequence[float] | Mapping[str, float] = (0.8, 0.1, 0.1),
    workers: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, int]]]:
    """Generate n images per family; returns {family: {"images": {split: k}, "records": {...}}}.

    `difficulty` is one level ('easy', 'medium', 'hard' or 0-2) or a {family: level} mapping.
    """
    fams, levels, fractions = _check_args(
        families, n, seed, image_size, difficulty, splits, workers
    )
    out = Path(out)
    sizes = split_sizes(n, fractions)
    jobs = []
    for fam in fams:
        for split, count in sizes.items():
            _clean(out / fam, split)
            (out / fam / "images" / split).mkdir(parents=True, exist_ok=True)
            jobs += [(fam, split, i, seed, image_size, levels[fam], str(out)) for i in range(count)]
    metas: dict[tuple[str, str], dict[int, dict]] = {}
    with progress_bar(progress, elapsed=False) as bar:
        task = bar.add_task(f"rendering {','.join(fams)}", total=len(jobs))
        if workers == 1:
            results = map(_render_one, jobs)
            pool = None
        else:
            # spawn: safe even when the parent already runs torch threads (fork could deadlock).
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap_unordered(_render_one, jobs, chunksize=4)
        try:
            for fam, split, index, meta in results:
                metas.setdefault((fam, split), {})[index] = meta
                bar.advance(task)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for fam in fams:
        family = FAMILIES.get(fam)()
        counts[fam] = {"images": {}, "records": {}}
        for split, count in sizes.items():
            by_index = metas.get((fam, split), {})
            records = family.to_records(split, [by_index[i] for i in range(count)], out / fam, seed)
            check_records(records, f"{fam}/{split}")
            write_records(out / fam / f"{split}.jsonl", records)
            counts[fam]["images"][split] = count
            counts[fam]["records"][split] = len(records)
    _write_manifest(out, fams, counts, seed, image_size, levels, fractions)
    return counts


def _write_manifest(
    out: Path,
    fams: list[str],
    counts: dict[str, Any],
    seed: int,
    image_size: int,
    levels: dict[str, str],
    fractions: dict[str, float],
) -> None:
    """manifest.json: per family its options and counts; entries of other families are kept."""
    path = out / "manifest.json"
    manifest: dict[str, Any] = {"generator": "polyvis.data.synthetic", "families": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            manifest["families"] = {
                k: v for k, v in old.get("families", {}).items() if k not in fams
            }
        except (json.JSONDecodeError, AttributeError):
            pass  # an unreadable old manifest is simply replaced
    for fam in fams:
        manifest["families"][fam] = {
            "metric": FAMILIES.get(fam).metric,
            "seed": seed,
            "image_size": image_size,
            "difficulty": levels[fam],
            "splits": fractions,
            "files": {split: f"{fam}/{split}.jsonl" for split in counts[fam]["images"]},
            **counts[fam],
        }
    manifest["families"] = dict(sorted(manifest["families"].items()))
    manifest["polyvis_version"] = __version__
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
