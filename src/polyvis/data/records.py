"""The one record format: LLaVA conversation JSON / JSONL.

A record is a dict:
    {"id": "scene-train-000001",
     "image": "images/train/000001.png",          # or "images": [...], or neither (text only)
     "family": "scene",                            # optional: which metric scores it
     "conversations": [{"from": "human", "value": "<image>\\nHow many circles?"},
                       {"from": "gpt", "value": "3"}]}
Image paths are relative to the records file's folder (or absolute). Other fields are kept;
`box_format` ("pixels" or "norm1000", polyvis.data.boxes), when present, says how the answers'
boxes are written (absent: pixels).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from polyvis.data.boxes import BOX_FORMATS
from polyvis.errors import DataError
from polyvis.paths import atomic_file

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


def record_image_paths(rec: dict[str, Any], root: str | Path | None = None) -> list[Path]:
    """The record's image paths, resolved against `root` (the records file's folder)."""
    if "images" in rec and rec["images"] is not None:
        names = list(rec["images"])
    elif rec.get("image"):
        names = [rec["image"]]
    else:
        names = []
    base = Path(root) if root is not None else None
    return [Path(n) if base is None or Path(n).is_absolute() else base / n for n in names]


def record_id(rec: Any) -> str | int | None:
    """The record's usable id (a non-empty string or an integer), else None: an id that is a list
    or an object names nothing, and cannot be counted for duplicates."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    usable = isinstance(rid, (str, int)) and not isinstance(rid, bool)  # true == 1 in Python
    return rid if usable and rid != "" else None


def record_label(rec: Any, index: int) -> str | int:
    """How messages name a record: its id, or `#index` (0-based) when it has no usable one."""
    rid = record_id(rec)
    return f"#{index}" if rid is None else rid


def validate_record(rec: Any) -> list[str]:
    """What is wrong with one record (empty list when it is fine)."""
    if not isinstance(rec, dict):
        return [f"record is a {type(rec).__name__}, not an object"]
    problems = []
    rid = rec.get("id")
    if rid is None or rid == "":
        problems.append("missing 'id'")
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        problems.append(f"'id' must be a string or an integer, not {type(rid).__name__}")
    paths_ok = True  # record_image_paths would raise on paths of the wrong type
    if "image" in rec and "images" in rec:
        problems.append("has both 'image' and 'images'")
        paths_ok = False
    if "images" in rec and not (
        isinstance(rec["images"], list) and all(isinstance(x, str) for x in rec["images"])
    ):
        problems.append("'images' must be a list of paths")
        paths_ok = False
    if "image" in rec and rec["image"] is not None and not isinstance(rec["image"], str):
        problems.append("'image' must be a path string")
        paths_ok = False
    if paths_ok and any("\0" in str(n) for n in record_image_paths(rec)):
        # a bad escape in the JSON: the OS refuses such a path with a ValueError, not "missing"
        problems.append("an image path contains a NUL character (\\u0000)")
        paths_ok = False
    family = rec.get("family")
    if family is not None and not isinstance(family, str):  # it names a group and a metric
        problems.append(f"'family' must be a string, not {type(family).__name__}")
    box_format = rec.get("box_format")
    if "box_format" in rec and box_format not in BOX_FORMATS:  # drawing would misplace the boxes
        problems.append(f"'box_format' must be one of {', '.join(BOX_FORMATS)}, not {box_format!r}")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        problems.append("'conversations' must be a non-empty list")
        return problems
    wrong_roles = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(f"turn {i} must be an object with a string 'value'")
            return problems
        if turn.get("from") != ROLES[i % 2]:
            wrong_roles.append(i)
    if wrong_roles:  # the first one, not one problem per turn (user/assistant: every turn)
        i = wrong_roles[0]
        n = len(wrong_roles) - 1
        more = f" (and {n} more turn{'s' if n > 1 else ''})" if n else ""
        problems.append(
            f"turn {i} is from {conv[i].get('from')!r}, expected {ROLES[i % 2]!r}{more}"
        )
    if len(conv) % 2:
        problems.append("conversation ends with a human turn (no answer)")
    # by position, not by 'from': a wrong role is reported above, not as a marker count too
    n_markers = sum(t["value"].count(IMAGE_TOKEN) for t in conv[0::2])
    n_markers_gpt = sum(t["value"].count(IMAGE_TOKEN) for t in conv[1::2])
    if n_markers_gpt:
        problems.append(f"an answer contains {IMAGE_TOKEN}")
    if paths_ok:
        n_images = len(record_image_paths(rec))
        if n_markers != n_images:
            problems.append(f"{n_markers} {IMAGE_TOKEN} markers but {n_images} images")
    return problems


def check_records(records: Iterable[Any], source: str = "records") -> list[dict[str, Any]]:
    """Validate all records; raise one DataError naming every bad record id and its problem."""
    records = list(records)
    bad, seen = [], set()
    for i, rec in enumerate(records):
        problems = validate_record(rec)
        rid = record_id(rec)
        if rid is not None:  # only real ids can repeat
            if rid in seen:
                problems.append("duplicate id")
            seen.add(rid)
        if problems:
            bad.append(f"{record_label(rec, i)}: {'; '.join(problems)}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{source}: {len(bad)} bad record(s): {' | '.join(bad[:5])}{more}")
    return records


def not_a_records_file(path: str | Path) -> str:
    """Why `path` cannot be read as a records file: missing, or a folder (a converter's --out),
    whose records files are named."""
    path = Path(path)
    if not path.is_dir():
        return f"{path}: records file not found"
    inside = ", ".join(str(f) for f in sorted(path.glob("*.jsonl"))[:3]) or "its .jsonl files"
    return f"{path}: a folder, not a records file; name the records files in it ({inside})"


def read_records(
    path: str | Path, validate: bool = True, allow_empty: bool = True
) -> list[dict[str, Any]]:
    """Read a JSON list or JSONL file of records (a UTF-8 byte order mark is fine).

    validate: check every record (check_records). allow_empty=False: a file without records is a
    DataError naming it, for files a user named (an empty split of generated data is fine).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(not_a_records_file(path))
    text = _utf8_text(path)
    if not text.strip():
        records: Any = []
    elif path.suffix == ".jsonl" or text.lstrip()[:1] == "{":
        records = _jsonl_records(path, text)
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: not valid JSON (column {err.colno}: {err.msg})"
            ) from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records")
    if not records and not allow_empty:
        raise DataError(f"{path}: no records")
    return check_records(records, str(path)) if validate else records


def _utf8_text(path: Path) -> str:
    """The file's text; a DataError naming the line of the first byte that is not UTF-8 (in a
    file of many records, an offset alone leaves the user searching)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read records file ({err.strerror or err})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Windows "Unicode" saves: every line would fail
        raise DataError(
            f"{path}: UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")  # -sig: editors on Windows write a BOM
    except UnicodeDecodeError as err:
        start = err.start + len(data) - len(err.object)  # err counts after the BOM
        line = data.count(b"\n", 0, start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[start]:02x} at offset {start}); "
            "save it as UTF-8"
        ) from None


_ID_RE = re.compile(r'"id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')


def _jsonl_records(path: Path, text: str) -> list[Any]:
    """One record per line; an error names the file, the line (1-based) and the record's id when
    the broken line still shows one."""
    records, offset = [], 0
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for n, line in enumerate(text.split("\n"), start=1):
        start, offset = offset + len(line) - len(line.lstrip()), offset + len(line) + 1
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            found = _ID_RE.search(line)
            rid = f" ({found.group(1) or found.group(2)})" if found else ""
            raise DataError(f"{path}:{n}{rid}: {_why_not_json(text, start, n, err)}") from None
    return records


def _why_not_json(text: str, start: int, n: int, err: json.JSONDecodeError) -> str:
    """Why line n (its value starting at `start`) is not one record. Pretty-printed records and
    records glued on one line are common slips that the parser's own message hides."""
    if err.msg == "Extra data" and _value_end(err.doc, err.pos) is not None:
        return (
            f"more than one JSON value on the line (the next at column {err.colno}); "
            "JSONL holds one record a line"
        )
    end = _value_end(text, start) if err.msg != "Extra data" else None
    if end is not None:
        last = n + text.count("\n", start, end)
        return (
            f"a JSON value spread over lines {n}-{last}: JSONL needs one record a line "
            "(and a .json file a list of records)"
        )
    return f"not valid JSON (column {err.colno}: {err.msg})"


def _value_end(text: str, pos: int) -> int | None:
    """Where the JSON value starting at `pos` ends, None when none does."""
    try:
        return json.JSONDecoder().raw_decode(text, pos)[1]
    except json.JSONDecodeError:
        return None


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSONL (or as a JSON list when the name ends in .json)."""
    path = Path(path)
    records = list(records)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        if path.suffix == ".json":
            json.dump(records, f, ensure_ascii=False, indent=1)
        else:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def make_record(
    rid: str,
    image: str | list[str] | None,
    turns: list[tuple[str, str]],
    family: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a record from (question, answer) turns; the first question gets the image marker."""
    conv = []
    images = [image] if isinstance(image, str) else list(image or [])
    for i, (q, a) in enumerate(turns):
        if i == 0 and images and IMAGE_TOKEN not in q:
            q = "\n".join([IMAGE_TOKEN] * len(images) + [q])
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    rec: dict[str, Any] = {"id": rid}
    if len(images) == 1:
        rec["image"] = images[0]
    elif images:
        rec["images"] = images
    if family:
        rec["family"] = family
    rec["conversations"] = conv
    rec.update(extra)
    return rec
