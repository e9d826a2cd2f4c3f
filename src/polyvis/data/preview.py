"""A contact sheet of records: tiles (polyvis.data.tiles) taken in turn from each records file.

from polyvis.data.preview import write_preview
write_preview("data/nano", "sheet.png", n=16)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from PIL import Image

from polyvis.data.scan import ScannedRecord, scan_records
from polyvis.data.tiles import record_tile
from polyvis.errors import DataError

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


def preview_sheet(path: str | Path, n: int = 16, tile: int = 160) -> tuple[Image.Image, int]:
    """The contact sheet of up to n records under `path` and how many it shows."""
    scanned, _ = scan_records(path)
    chosen = pick_round_robin(scanned, n)
    if not chosen:
        raise DataError(f"{path}: no valid records with existing images to preview")
    tiles = [record_tile(r.record, r.images[0], tile) for r in chosen]
    return contact_sheet(tiles, tile), len(tiles)


def write_preview(path: str | Path, out: str | Path, n: int = 16, tile: int = 160) -> int:
    """Write the contact sheet of `path`'s records to the image file `out`; return its size in
    records."""
    sheet, shown = preview_sheet(path, n, tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return shown
