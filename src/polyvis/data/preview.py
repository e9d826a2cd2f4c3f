"""A contact sheet of records: tiles (polyvis.data.tiles) taken in turn from each records file.

from polyvis.data.preview import write_preview
write_preview("data/nano", "sheet.png", n=16)
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from PIL import Image

from polyvis.data.images import ImageError
from polyvis.data.scan import ScannedRecord, scan_records
from polyvis.data.tiles import record_tile
from polyvis.errors import ConfigError, DataError

__all__ = ["contact_sheet", "pick_round_robin", "preview_sheet", "write_preview"]

GAP = 6


def pick_round_robin(scanned: list[ScannedRecord], n: int) -> list[ScannedRecord]:
    """Up to n valid records with images, taken in turn from each records file (so every family
    and split shows up), each file's in file order."""
    per_file: dict[Path, list[ScannedRecord]] = defaultdict(list)
    for r in scanned:
        if r.ok and r.images:
            per_file[r.file].append(r)
    queues = [list(reversed(v)) for _, v in sorted(per_file.items())]
    chosen: list[ScannedRecord] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return chosen


def contact_sheet(tiles: list[Image.Image], tile_width: int) -> Image.Image:
    """The tiles on a grey sheet, row by row, in a near-square grid."""
    cols = min(len(tiles), max(1, round(len(tiles) ** 0.5)))
    rows = -(-len(tiles) // cols)
    th = max(t.height for t in tiles)
    sheet = Image.new(
        "RGB", (cols * (tile_width + GAP) + GAP, rows * (th + GAP) + GAP), (200, 200, 200)
    )
    for k, t in enumerate(tiles):
        sheet.paste(t, (GAP + (k % cols) * (tile_width + GAP), GAP + (k // cols) * (th + GAP)))
    return sheet


def _check_sizes(n: int, tile: int) -> None:
    for name, value in (("n", n), ("tile", tile)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(name, f"must be a positive integer, got {value!r}")


def preview_sheet(
    path: str | Path, n: int = 16, tile: int = 160, skipped: list[str] | None = None
) -> tuple[Image.Image, int]:
    """The contact sheet of up to n records under `path` and how many it shows.

    A record whose image cannot be read (corrupt, too large) is left out and the next one in
    turn takes its place; `skipped`, when given, gets one "file: id: problem" line for each.
    """
    _check_sizes(n, tile)
    scanned, _ = scan_records(path)
    tiles: list[Image.Image] = []
    for r in pick_round_robin(scanned, len(scanned)):  # in turn, as far as needed to fill n
        if len(tiles) == n:
            break
        try:
            tiles.append(record_tile(r.record, r.images[0], tile))
        except ImageError as err:  # one bad image costs its tile, not the sheet
            if skipped is not None:
                skipped.append(f"{r.file}: {r.record.get('id')}: {err}")
    if not tiles:
        raise DataError(f"{path}: no valid records with existing images to preview")
    return contact_sheet(tiles, tile), len(tiles)


def _image_format(out: Path) -> str:
    """PIL's format name for the file name's extension; ConfigError when PIL cannot write it."""
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        what = f"unknown image extension {out.suffix!r}" if out.suffix else "no image extension"
        raise ConfigError("out", f"{out}: {what}; use .png (or .jpg, .webp, ...)")
    return fmt


def write_preview(
    path: str | Path,
    out: str | Path,
    n: int = 16,
    tile: int = 160,
    skipped: list[str] | None = None,
) -> int:
    """Write the contact sheet of `path`'s records to the image file `out`; return its size in
    records. `skipped`: as for `preview_sheet`."""
    out = Path(out)
    fmt = _image_format(out)  # before the work, not after it
    sheet, shown = preview_sheet(path, n, tile, skipped)
    buf = io.BytesIO()
    try:  # encode in memory first: a failure leaves no half-written file behind
        sheet.save(buf, format=fmt)
    except (OSError, ValueError) as err:  # e.g. a format that cannot hold an RGB image
        raise ConfigError("out", f"{out}: cannot write a {fmt} image ({err})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return shown
