"""Where polyvis keeps its cache, and the one way it writes files and folders atomically.

Every writer builds under a temporary name that carries its process id, flushes to disk, then
renames: a reader sees the old state or the new one, never half of it, and two processes that
build the same thing never rename each other's half-written copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where generated data, nano experts and encoder features are kept (POLYVIS_CACHE overrides).
    Absolute, so that the paths under it that run configs record hold from any folder."""
    return Path(os.environ.get("POLYVIS_CACHE", Path.home() / ".cache" / "polyvis")).absolute()


def checked_cache_root() -> Path:
    """cache_root(), or a ConfigError when it (or a folder above it) is a file: said once, before
    any work, rather than as an OS error deep inside a worker."""
    return check_folder_path(cache_root(), "POLYVIS_CACHE")


def check_folder_path(path: str | Path, field: str) -> Path:
    """`path` if it is a folder or could be made one; a ConfigError naming `field` when it, or
    the nearest existing folder above it, is a file (checked before the work that writes it)."""
    from polyvis.errors import ConfigError

    path = Path(path)
    for p in (path, *path.absolute().parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(field, f"{p} is a file, not a folder")
            break
    return path


# `.NAME.PID.tmp` (temporary_name) and `.NAME.PID.stale` (atomic_dir's replaced folders)
_LEFTOVER = re.compile(r"^\..+\.\d+\.(tmp|stale)$")


def cache_leftovers(root: str | Path, older_than_s: float) -> list[Path]:
    """The temporary folders and files under the cache `root` that a killed process left (its
    `.NAME.PID.tmp`), untouched for `older_than_s` seconds: by age, not by PID, since a cache
    may be shared by machines whose PIDs mean nothing here."""
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    found = []
    for path in sorted(root.rglob(".*")):
        inside = any(_LEFTOVER.match(p.name) for p in path.relative_to(root).parents)
        old = now - path.lstat().st_mtime > older_than_s
        if _LEFTOVER.match(path.name) and old and not inside:  # a leftover's content goes with it
            found.append(path)
    return found


def check_replaceable(path: str | Path, marker: str, what: str, field: str = "--out") -> Path:
    """check_folder_path, and `path` absent, empty or an earlier `what` (it holds `marker`),
    which a new one may replace whole; a folder of anything else is refused, not emptied."""
    from polyvis.errors import ConfigError

    path = check_folder_path(path, field)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise ConfigError(field, f"{path} is not empty and holds no {what}")
    return path


def temporary_name(path: str | Path) -> Path:
    """A hidden sibling of `path` unique to this process: `.NAME.PID.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            _fsync(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    text = json.dumps(data, indent=indent) + ("\n" if indent is not None else "")
    return write_text_atomic(path, text)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through (for writers that take a file name, such as
    safetensors' save_file); on success it is fsynced and renamed over `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, replace: bool = False, complete: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder to build `path` in; on success it becomes `path`.

    `replace=False` (caches): when another process finished `path` first, ours is discarded and
    theirs kept, so a lost race leaves nothing behind. `complete(path)` tells a finished folder
    from a stale incomplete one (a copy cut short, an older writer), which ours then replaces.
    `replace=True` (checkpoints): ours replaces whatever is there. On an error the temporary
    folder is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():  # not a lost race: a real failure
                raise
            if complete is not None and not complete(path):
                _replace_stale(path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_stale(path: Path, tmp: Path) -> None:
    """Put the finished `tmp` where the incomplete folder `path` is; the stale one is moved aside
    first (a rename, so a reader never sees a mix) and removed."""
    stale = path.with_name(f".{path.name}.{os.getpid()}.stale")
    shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process moved it first
        os.replace(path, stale)
    try:
        os.replace(tmp, path)
    except OSError:
        if not path.is_dir():  # not a lost race with a process that replaced it too
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)
