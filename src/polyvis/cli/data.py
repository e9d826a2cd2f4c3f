"""`polyvis data ...`: generate synthetic data, convert real datasets, inspect and preview records.

polyvis data synth --families scene,ocr --n 100 --seed 0 --out data/nano [--size 64]
polyvis data convert coco --annotations instances.json --images DIR --out DIR
polyvis data inspect DIR
polyvis data preview DIR --out sheet.png [--n 16]
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ALL_FAMILIES = "scene,ocr,latex,chart,table,mixed"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command and its actions."""
    p = subparsers.add_parser("data", help="synthetic data, converters, inspection, previews")
    p.set_defaults(func=lambda a: _usage(p))
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = sub.add_parser("synth", help="generate synthetic task families (seeded, offline)")
    s.add_argument(
        "--families", default=ALL_FAMILIES, help=f"comma-separated (default {ALL_FAMILIES})"
    )
    s.add_argument("--n", type=int, default=100, help="images per family (all splits together)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument(
        "--difficulty",
        default="medium",
        help="easy|medium|hard, or per family: scene=hard,ocr=easy",
    )
    s.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions")
    s.add_argument("--workers", type=int, default=1, help="processes rendering images")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=_synth)

    c = sub.add_parser("convert", help="convert a real dataset into records")
    c.set_defaults(func=lambda a: _usage(c))
    csub = c.add_subparsers(dest="kind", metavar="KIND")
    from polyvis.data.converters import CONVERTERS, load_converters

    for name in load_converters():
        conv = CONVERTERS.get(name)
        cp = csub.add_parser(name, help=conv.help, description=conv.help)
        cp.add_argument("--out", type=Path, required=True, help="folder for SPLIT.jsonl")
        cp.add_argument("--split", default="train", help="split name: writes OUT/SPLIT.jsonl")
        conv.add_arguments(cp)
        cp.set_defaults(func=_convert, converter=name)

    i = sub.add_parser("inspect", help="count and validate the records under a folder")
    i.add_argument("path", type=Path, help="a folder (searched for *.jsonl) or one records file")
    i.add_argument("--max-errors", type=int, default=20, help="bad records listed at most")
    i.set_defaults(func=_inspect)

    v = sub.add_parser("preview", help="contact sheet of images with questions and answers")
    v.add_argument("path", type=Path, help="a folder (searched for *.jsonl) or one records file")
    v.add_argument("--out", type=Path, required=True, help="PNG to write")
    v.add_argument("--n", type=int, default=16, help="how many records")
    v.add_argument("--tile", type=int, default=160, help="tile width in pixels")
    v.set_defaults(func=_preview)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _parse_difficulty(text: str) -> str | dict[str, str]:
    if "=" not in text:
        return text
    return dict(part.split("=", 1) for part in text.split(",") if part)


def _synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from polyvis.data.synthetic import generate
    from polyvis.errors import ConfigError

    try:
        splits = tuple(float(x) for x in args.splits.split(","))
    except ValueError:
        raise ConfigError("splits", f"{args.splits!r} is not comma-separated numbers") from None
    counts = generate(
        args.families,
        n=args.n,
        seed=args.seed,
        out=args.out,
        image_size=args.size,
        difficulty=_parse_difficulty(args.difficulty),
        splits=splits,
        workers=args.workers,
        progress=not args.no_progress,
    )
    table = Table(title=f"synthetic data in {args.out}")
    for col in ("family", "split", "images", "records"):
        table.add_column(col, justify="left" if col in ("family", "split") else "right")
    for fam, c in counts.items():
        for split, n_img in c["images"].items():
            table.add_row(fam, split, str(n_img), str(c["records"][split]))
    Console().print(table)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from polyvis.data.converters import get_converter
    from polyvis.data.records import check_records, write_records

    conv = get_converter(args.converter)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = check_records(conv.convert(args, out_dir), f"{conv.name} converter output")
    path = write_records(out_dir / f"{args.split}.jsonl", records)
    print(f"wrote {len(records)} records to {path}")
    return 0


def _records_files(path: Path) -> list[Path]:
    from polyvis.errors import DataError

    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else []
    if not files:
        raise DataError(f"{path}: no *.jsonl records files found")
    return files


def scan_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every records file under path: rows of (file, family, split, record, image paths), problems.

    Problems are "file: id: what is wrong" lines (validation, duplicate ids, missing images).
    """
    from polyvis.data.records import read_records, record_image_paths, validate_record
    from polyvis.errors import DataError

    rows, bad = [], []
    for f in _records_files(path):
        try:
            records = read_records(f, validate=False)
        except DataError as err:
            bad.append(str(err))
            continue
        ids = Counter(r.get("id") for r in records if isinstance(r, dict))
        for k, rec in enumerate(records):
            problems = validate_record(rec)
            rid = rec.get("id", f"#{k}") if isinstance(rec, dict) else f"#{k}"
            images: list[Path] = []
            if isinstance(rec, dict):
                if ids[rec.get("id")] > 1:
                    problems.append("duplicate id")
                if not problems:
                    images = record_image_paths(rec, f.parent)
                    problems += [f"image not found: {p}" for p in images if not p.is_file()]
            family = rec.get("family") if isinstance(rec, dict) else None
            rows.append(
                {
                    "file": f,
                    "family": family or f.parent.name,
                    "split": f.stem,
                    "record": rec,
                    "images": images,
                    "ok": not problems,
                }
            )
            if problems:
                bad.append(f"{f}: {rid}: {'; '.join(problems)}")
    return rows, bad


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    rows, bad = scan_records(args.path)
    stats: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"records": 0, "images": set(), "bad": 0}
    )
    for r in rows:
        s = stats[(r["family"], r["split"])]
        s["records"] += 1
        s["images"].update(r["images"])
        s["bad"] += 0 if r["ok"] else 1
    table = Table(title=f"records under {args.path}")
    for col in ("family", "split", "records", "images", "bad"):
        table.add_column(col, justify="left" if col in ("family", "split") else "right")
    for (fam, split), s in sorted(stats.items()):
        table.add_row(fam, split, str(s["records"]), str(len(s["images"])), str(s["bad"]))
    console = Console()
    console.print(table)
    for line in bad[: args.max_errors]:
        console.print(f"[red]bad[/red] {line}", markup=True, highlight=False, soft_wrap=True)
    if len(bad) > args.max_errors:
        console.print(f"... and {len(bad) - args.max_errors} more bad records")
    print(f"{len(rows)} records, {len(bad)} bad")
    return 1 if bad else 0


def _pick_round_robin(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n usable records, taken in turn from each records file (so every family shows)."""
    per_file: dict[Path, list[dict]] = defaultdict(list)
    for r in rows:
        if r["ok"] and r["images"]:
            per_file[r["file"]].append(r)
    queues = [list(reversed(v)) for _, v in sorted(per_file.items())]
    chosen: list[dict[str, Any]] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return chosen


def _tile(row: dict[str, Any], width: int) -> Any:
    """One preview tile: the image (boxes drawn for grounding answers), then id, Q and A."""
    from PIL import Image, ImageDraw

    from polyvis.data.converters.coco import parse_box
    from polyvis.data.synthetic.common import font

    rec = row["record"]
    conv = rec["conversations"]
    question = conv[0]["value"].replace("<image>", "").strip()
    answer = conv[1]["value"]
    with Image.open(row["images"][0]) as im:
        src = im.convert("RGB")
    scale = width / max(src.size)
    shown = src.resize(
        (max(1, round(src.width * scale)), max(1, round(src.height * scale))),
        Image.NEAREST if scale >= 1 else Image.LANCZOS,
    )
    fnt = font(11)
    chars = max(10, int(width / 6.2))
    lines = [str(rec.get("id"))]
    lines += textwrap.wrap("Q: " + question, chars)[:3]
    lines += textwrap.wrap("A: " + answer.replace("\n", " / "), chars)[:4]
    tile = Image.new("RGB", (width, width + 6 + 13 * len(lines)), (255, 255, 255))
    tile.paste(shown, (0, 0))
    draw = ImageDraw.Draw(tile)
    box = parse_box(answer)
    if box is not None:
        draw.rectangle([round(v * scale) for v in box], outline=(255, 0, 255), width=2)
    for k, line in enumerate(lines):
        draw.text((2, width + 3 + 13 * k), line, font=fnt, fill=(0, 0, 0) if k else (90, 90, 90))
    return tile


def _preview(args: argparse.Namespace) -> int:
    from PIL import Image

    from polyvis.errors import DataError

    rows, _ = scan_records(args.path)
    chosen = _pick_round_robin(rows, args.n)
    if not chosen:
        raise DataError(f"{args.path}: no valid records with existing images to preview")
    tiles = [_tile(r, args.tile) for r in chosen]
    cols = min(len(tiles), max(1, round(len(tiles) ** 0.5)))
    rows_n = -(-len(tiles) // cols)
    th = max(t.height for t in tiles)
    gap = 6
    sheet = Image.new(
        "RGB", (cols * (args.tile + gap) + gap, rows_n * (th + gap) + gap), (200, 200, 200)
    )
    for k, t in enumerate(tiles):
        sheet.paste(t, (gap + (k % cols) * (args.tile + gap), gap + (k // cols) * (th + gap)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote a preview of {len(tiles)} records to {args.out}")
    return 0
