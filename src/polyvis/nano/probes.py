"""What each expert knows: linear probes on frozen features, with their controls.

    from polyvis.nano.probes import run_probes
    table = run_probes({"clip-nano": clip_dir, "dino-nano": dino_dir}, [data_dir])
    print(table.markdown())

Each expert is read the way a polyvis config reads it (polyvis.models.build.build_encoder:
the same layers, the class and register tokens dropped), at every layer it reads. Controls: the
same architecture at random initialisation (seeded), and raw pixels cut into 8 x 8 patches.
Every source is probed twice: pooled (the mean over patches) and as its patch grid (finer grids
average-pooled to 8 x 8, then flattened). Probes train on the train split and are scored on val, never test
(polyvis.nano.probe_fit: closed-form ridge, deterministic). The questions come from the scene
and mixed families' own records (polyvis.nano.probe_data).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polyvis.errors import ConfigError
from polyvis.nano.probe_data import ORDER, ProbeSet, find_probe_sets
from polyvis.nano.probe_fit import Score, majority, score_tasks, standardise

POOLINGS = ("pooled", "grid")
RAW_PATCH = 8  # raw pixels are cut into the 8 x 8 patches of clip-nano and vary-nano
# Grid probes read every grid at the coarsest experts' 8 x 8 (finer grids average-pooled), as a
# fusion aligns grids: flattened at 16 x 16, dino-nano's 32768 features outnumber the training
# images 14 to 1 and the probe starves (docs/nano.md).
GRID_SIDE = 8
# The probes' own images when no folder is given: the world's scene (medium), its detail
# variant and easy mixed, at another seed than the experts' training data (seed 0), so no probe
# image was seen.
PROBE_DATA: list[dict[str, Any]] = [
    {"families": ["scene"], "n": 3000, "seed": 1},
    {"families": ["detail"], "n": 3000, "seed": 1},
    {"families": ["mixed"], "n": 3000, "seed": 1, "difficulty": "easy"},
]


def probe_data_dirs(progress: bool = False) -> list[Path]:
    """PROBE_DATA's folders, generated once into the cache."""
    from polyvis.data.synthetic.cache import ensure_synthetic

    return [ensure_synthetic(opts, progress=progress) for opts in PROBE_DATA]


@dataclass
class ProbeTable:
    """Val accuracy per source (an expert's layer, its random twin, raw pixels) and probe."""

    rows: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    # scores[row][pooling][probe] = (correct, n)
    scores: dict[str, dict[str, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    chance: dict[str, tuple[int, int]] = field(default_factory=dict)

    def accuracy(self, row: str, pooling: str, probe: str) -> float | None:
        hit = self.scores.get(row, {}).get(pooling, {}).get(probe)
        return hit[0] / hit[1] if hit and hit[1] else None

    def markdown(self) -> str:
        """One line per source; each cell `pooled / grid` val accuracy in %."""
        lines = ["| source | " + " | ".join(self.probes) + " |",
                 "|---|" + "---:|" * len(self.probes)]  # fmt: skip
        for row in self.rows:
            cells = []
            for p in self.probes:
                a, b = (self.accuracy(row, k, p) for k in POOLINGS)
                cells.append(" / ".join("-" if v is None else f"{100 * v:.0f}" for v in (a, b)))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        chance = [
            f"{100 * c / n:.0f}" if n else "-" for c, n in (self.chance[p] for p in self.probes)
        ]
        lines.append("| majority class | " + " | ".join(chance) + " |")
        n_val = ", ".join(f"{p} {self.chance[p][1]}" for p in self.probes)
        lines.append(f"\nval images per probe: {n_val}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "probes": self.probes, "scores": self.scores,
                "chance": self.chance}  # fmt: skip


def default_layers(path: Path) -> list[int]:
    """The layers an expert's training log says polyvis reads (read_layers, else read_layer)."""
    log_file = Path(path) / "training_log.json"
    if log_file.is_file():
        log = json.loads(log_file.read_text(encoding="utf-8"))
        if log.get("read_layers"):
            return list(log["read_layers"])
        if log.get("read_layer") is not None:
            return [int(log["read_layer"])]
    return [-1]


def expert_encoders(path: Path, layers: list[int] | str, seed: int) -> tuple[Any, Any, Any]:
    """(trained encoder, its random-init twin, the trained one's image processor), both read
    at the same layers as polyvis reads them."""
    from transformers import AutoConfig

    from polyvis.config import EncoderSpec
    from polyvis.models.build import build_encoder
    from polyvis.models.encoders import VisionEncoder, vision_config_of

    spec = EncoderSpec(name="probe", path=str(path), layers=layers)
    backbone, processor, entry = build_encoder(spec, 0, torch.float32)
    config = vision_config_of(AutoConfig.from_pretrained(path)).to_dict()
    twin_spec = EncoderSpec(name="probe", config=config, layers=layers,
                            image_size=entry["image_size"][0])  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        twin, _, twin_entry = build_encoder(twin_spec, 0, torch.float32)
    return VisionEncoder(backbone, entry), VisionEncoder(twin, twin_entry), processor


def on_grid(tokens: torch.Tensor, grid: tuple[int, int], side: int | None) -> torch.Tensor:
    """(n, h * w, D) patch tokens -> (n, side * side * D): average-pooled to side x side when
    the grid is a multiple of it (the native grid otherwise, or when side is None)."""
    n, _, d = tokens.shape
    h, w = grid
    if side and (h, w) != (side, side) and h % side == 0 and w % side == 0:
        maps = tokens.transpose(1, 2).reshape(n, d, h, w)
        maps = torch.nn.functional.avg_pool2d(maps, (h // side, w // side))
        tokens = maps.flatten(2).transpose(1, 2)
    return tokens.flatten(1)


@torch.no_grad()
def encoder_features(
    encoder: Any, pixels: torch.Tensor, grid_side: int | None = GRID_SIDE, batch: int = 128
) -> list[dict[str, torch.Tensor]]:
    """Per read layer: {"pooled": (n, D), "grid": (n, side * side * D)}."""
    encoder.eval()
    pooled: list[list[torch.Tensor]] = [[] for _ in encoder.layers]
    grid: list[list[torch.Tensor]] = [[] for _ in encoder.layers]
    for i in range(0, len(pixels), batch):
        for k, h in enumerate(encoder(pixels[i : i + batch])):
            pooled[k].append(h.mean(1))
            grid[k].append(on_grid(h, encoder.grid, grid_side))
    return [{"pooled": torch.cat(p), "grid": torch.cat(g)} for p, g in zip(pooled, grid)]


def raw_features(images: Sequence[Path], size: int = 64) -> dict[str, torch.Tensor]:
    """Raw RGB in [0, 1] at size x size, cut into 8 x 8 patches: their mean, and all of them."""
    import numpy as np

    from polyvis.data.images import load_image
    from polyvis.nano.dino_model import patchify

    arrays = []
    for path in images:
        img = load_image(path)
        if img.size != (size, size):
            img = img.resize((size, size))
        arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
    px = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    patches = patchify(px, RAW_PATCH)
    return {"pooled": patches.mean(1), "grid": patches.flatten(1)}


def _score(feats: dict[str, torch.Tensor], probe_set: ProbeSet) -> dict[str, dict[str, Score]]:
    out = {}
    for pooling in POOLINGS:
        out[pooling] = score_tasks(standardise(feats[pooling], probe_set.n_train), probe_set.tasks)
    return out


def _merge(scores: dict[str, Score]) -> dict[str, tuple[int, int]]:
    """Per probe (counts), the per-colour `NAME:colour` tasks summed into NAME."""
    out: dict[str, tuple[int, int]] = {}
    for name, s in scores.items():
        key = name.split(":")[0]
        c, n = out.get(key, (0, 0))
        out[key] = (c + s.correct, n + s.n)
    return out


def run_probes(
    experts: dict[str, Path | str],
    data_dirs: Path | str | Sequence[Path | str],
    layers: dict[str, list[int] | str] | None = None,
    random_twins: bool = True,
    raw_pixels: bool = True,
    seed: int = 0,
    max_train: int | None = None,
    grid_side: int | None = GRID_SIDE,
    log: Any = None,
) -> ProbeTable:
    """Probe each expert (a checkpoint folder) on the scene / mixed data of `data_dirs`.

    layers: {expert: layers} overrides the layers its training log names (else [-1]); "all"
    probes every block. seed: the random twins' initialisation. max_train: at most this many
    training images per family (tests). grid_side: the grid probes' grid (None: each source's
    own). log: called with a line of progress, if given.
    """
    from polyvis.errors import DataError
    from polyvis.nano._common import load_pixels

    dirs = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]
    sets = find_probe_sets(dirs, max_train)
    if not sets:
        where = ", ".join(str(d) for d in dirs)
        raise DataError(f"{where}: no scene or mixed family with train and val splits found")
    say = log or (lambda line: None)
    table = ProbeTable()
    results: dict[str, dict[str, dict[str, Score]]] = {}

    def add(row: str, pooling_scores: dict[str, dict[str, Score]]) -> None:
        if row not in table.rows:
            table.rows.append(row)
        for pooling, scores in pooling_scores.items():
            results.setdefault(row, {}).setdefault(pooling, {}).update(scores)

    for name, path in experts.items():
        chosen = (layers or {}).get(name) or default_layers(Path(path))
        try:
            trained, twin, processor = expert_encoders(Path(path), chosen, seed)
        except ConfigError as err:  # named after the expert, not the encoder spec built here
            message = err.message
            raise ConfigError(f"experts.{name}", message) from None
        sources = [(name, trained)] + ([(f"{name} random-init", twin)] if random_twins else [])
        for probe_set in sets:
            pixels = load_pixels(probe_set.images, processor)
            for label, encoder in sources:
                for layer, feats in zip(
                    encoder.layers, encoder_features(encoder, pixels, grid_side)
                ):
                    say(f"{label} L{layer} on {probe_set.family}")
                    add(f"{label} L{layer}", _score(feats, probe_set))
    if raw_pixels:
        for probe_set in sets:
            say(f"raw pixels on {probe_set.family}")
            add("raw pixels", _score(raw_features(probe_set.images), probe_set))
    for probe_set in sets:
        for task in probe_set.tasks:
            table.chance.setdefault(task.name, (0, 0))
            c, n = table.chance[task.name]
            m = majority(task)
            table.chance[task.name] = (c + m.correct, n + m.n)
    table.chance = _merge({k: Score(c, n, 0.0) for k, (c, n) in table.chance.items()})
    for row, by_pooling in results.items():
        table.scores[row] = {p: _merge(s) for p, s in by_pooling.items()}
    found = set(table.chance)
    table.probes = [p for p in ORDER if p in found] + sorted(found - set(ORDER))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m polyvis.nano.probes --expert NAME=DIR[:L,L] ... [--data DIR] [--json OUT]`."""
    ap = argparse.ArgumentParser(prog="python -m polyvis.nano.probes", description=__doc__)
    ap.add_argument(
        "--expert",
        action="append",
        default=[],
        metavar="NAME=DIR[:LAYERS]",
        help="an expert checkpoint; LAYERS like -3,-1 or all (default: its log's)",
    )
    ap.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder with scene/ and/or mixed/, train and val (default: PROBE_DATA, cached)",
    )
    ap.add_argument("--no-random", action="store_true", help="leave out the random-init twins")
    ap.add_argument("--no-pixels", action="store_true", help="leave out raw pixels")
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid-side", type=int, default=GRID_SIDE, help="0: each source's own grid")
    ap.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = ap.parse_args(argv)
    from polyvis.errors import PolyVisError

    try:
        return _run_cli(args)
    except PolyVisError as err:  # a mistake in the arguments or the data: one line
        print(f"{ap.prog}: error: {err}", file=sys.stderr)
        return 2


def _run_cli(args: argparse.Namespace) -> int:
    experts, layers = parse_experts(args.expert)
    for flag, value in (("--max-train", args.max_train), ("--grid-side", args.grid_side)):
        if value is not None and value < (1 if flag == "--max-train" else 0):
            raise ConfigError(flag, f"must be at least {1 if flag == '--max-train' else 0}")
    for d in args.data or []:
        if not Path(d).is_dir():
            raise ConfigError("--data", f"{d}: folder not found")
    data = args.data or probe_data_dirs(progress=True)
    table = run_probes(
        experts, data, layers, not args.no_random, not args.no_pixels, args.seed,
        args.max_train, args.grid_side or None, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(table.markdown())
    if args.json is not None:
        from polyvis.paths import write_json_atomic

        write_json_atomic(args.json, table.to_json())
    return 0


def parse_experts(items: Sequence[str]) -> tuple[dict[str, Path], dict[str, list[int] | str]]:
    """--expert NAME=DIR[:LAYERS] values -> ({name: dir}, {name: layers}); a mistake is a
    ConfigError naming the flag and the value, checked before any model loads."""
    experts: dict[str, Path] = {}
    layers: dict[str, list[int] | str] = {}
    for item in items:
        name, eq, rest = item.partition("=")
        path, _, spec = rest.partition(":")
        if not eq or not name.strip() or not path:
            raise ConfigError("--expert", f"{item!r} must look like NAME=DIR[:LAYERS]")
        if not (Path(path) / "config.json").is_file():
            raise ConfigError("--expert", f"{path}: not an expert checkpoint (no config.json)")
        experts[name] = Path(path)
        if spec:
            try:
                layers[name] = "all" if spec == "all" else [int(x) for x in spec.split(",")]
            except ValueError:
                raise ConfigError(
                    "--expert", f"{name}: layers {spec!r} must be integers like -3,-1, or all"
                ) from None
    return experts, layers


if __name__ == "__main__":
    raise SystemExit(main())
