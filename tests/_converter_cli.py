"""Helpers for the converter tests: tiny images, and `polyvis data convert` run in-process."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from polyvis.cli import main
from polyvis.data.records import read_records, record_image_paths
from polyvis.eval.metrics import metric_for


def png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def convert(kind: str, args: list, out: Path, split: str = "train") -> list[dict]:
    """Run the CLI; return the records it wrote, checking they validate and their images exist."""
    argv = ["data", "convert", kind, *map(str, args), "--out", str(out), "--split", split]
    assert main(argv) == 0
    records = read_records(out / f"{split}.jsonl")  # validates every record
    for rec in records:
        assert all(p.is_file() for p in record_image_paths(rec, out)), rec
        metric_for(rec)  # a "metric" field must name a registered metric
    return records


def convert_error(kind: str, args: list, out: Path, capsys, split: str = "train") -> str:
    """Run the CLI on bad input; return its one-line error."""
    capsys.readouterr()
    argv = ["data", "convert", kind, *map(str, args), "--out", str(out), "--split", split]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polyvis: error:") and "\n" not in err
    return err


def qa(rec: dict) -> tuple[str, str]:
    human, gpt = rec["conversations"]
    return human["value"], gpt["value"]
