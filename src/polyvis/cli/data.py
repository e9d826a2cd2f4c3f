"""`polyvis data ...`: generate synthetic data, convert real datasets, inspect and preview records.

polyvis data synth --families scene,ocr --n 100 --seed 0 --out data/nano [--size 64]
polyvis data convert coco --annotations instances.json --images DIR --out DIR
polyvis data inspect DIR
polyvis data preview DIR --out sheet.png [--n 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

if TYPE_CHECKING:
    from polyvis.data.converters import ConverterParams

ALL_FAMILIES = "scene,ocr,latex,chart,table,mixed,binding,chartbind"


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
        _add_params(cp, conv.params)
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
    """`hard`, or per family `scene=hard,ocr=easy` (the levels themselves are checked later)."""
    from polyvis.errors import ConfigError

    if "=" not in text:
        return text
    levels = {}
    for part in filter(None, text.split(",")):
        family, sep, level = (x.strip() for x in part.partition("="))
        if not (sep and family and level):
            raise ConfigError("--difficulty", f"{part!r} is not FAMILY=LEVEL (e.g. scene=hard)")
        levels[family] = level
    return levels


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


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _option_order(params: type[ConverterParams]) -> list[str]:
    """`split` first, then the converter's own options, then the inherited ones (stable)."""
    inherited = params.__base__.model_fields
    return sorted(params.model_fields, key=lambda n: (n != "split", n in inherited))


def _add_params(parser: argparse.ArgumentParser, params: type[ConverterParams]) -> None:
    """One option per field of a converter's Params. Values stay strings (flags are booleans) and
    options not given stay unset, so the Params model alone converts, checks and defaults them."""
    for name in _option_order(params):
        info = params.model_fields[name]
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": info.description,
        }
        if info.annotation is bool:
            kwargs["action"] = "store_true"
        else:
            if get_origin(info.annotation) is Literal:
                kwargs["choices"] = list(get_args(info.annotation))
            kwargs["required"] = info.is_required()
        parser.add_argument(_flag(name), **kwargs)


def _convert(args: argparse.Namespace) -> int:
    from polyvis.data.converters import get_converter
    from polyvis.errors import ConfigError

    conv = get_converter(args.converter)
    options = {name: getattr(args, name) for name in conv.params.model_fields if name in args}
    try:
        params = conv.params(**options)
    except ConfigError as err:  # name the option as it was typed
        message = err.message
        raise ConfigError(_flag(err.field), message) from None
    path, records = conv.run(params, args.out)
    print(f"wrote {len(records)} records to {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from polyvis.data.scan import scan_records, split_stats

    scanned, bad = scan_records(args.path)
    # Ids, paths and families are user text: Text() shows "[bold]" as it is, never as markup.
    table = Table(title=Text(f"records under {args.path}"))
    for col in ("family", "split", "records", "images", "bad"):
        table.add_column(col, justify="left" if col in ("family", "split") else "right")
    for (fam, split), s in split_stats(scanned).items():
        table.add_row(Text(fam), Text(split), str(s.records), str(len(s.images)), str(s.bad))
    console = Console()
    console.print(table)
    for line in bad[: args.max_errors]:
        console.print(Text.assemble(("bad", "red"), " ", line), highlight=False, soft_wrap=True)
    if len(bad) > args.max_errors:
        console.print(f"... and {len(bad) - args.max_errors} more bad records")
    print(f"{len(scanned)} records, {len(bad)} bad")
    return 1 if bad else 0


def _preview(args: argparse.Namespace) -> int:
    from polyvis.data.preview import write_preview
    from polyvis.errors import ConfigError

    skipped: list[str] = []
    try:
        shown = write_preview(args.path, args.out, n=args.n, tile=args.tile, skipped=skipped)
    except ConfigError as err:  # name the option as it was typed
        raise ConfigError(_flag(err.field), err.message) from None
    print(f"wrote a preview of {shown} records to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} records whose image could not be read:")
        for line in skipped[:5]:
            print(f"  {line}")
        if len(skipped) > 5:
            print(f"  ... and {len(skipped) - 5} more")
    return 0
