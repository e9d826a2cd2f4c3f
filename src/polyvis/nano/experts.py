"""The pretrained nano experts, built once and cached by their settings.

    from polyvis.nano.experts import ensure_experts
    paths = ensure_experts()          # {"clip-nano": Path, "vary-nano": Path}
    ensure_experts(names=EXPERTS)     # and lm-nano, the fair protocol's LM (polyvis.nano.lm)

Each expert lives in cache_root()/experts/<name>-<hash of its settings and data>/ as a
save_pretrained checkpoint with its image processor, so a config lists it as an encoder `path:`
(clip-nano: layers [-2]; vary-nano: layers [-1]); lm-nano is a causal LM with its tokenizer,
listed as `llm: {path: ...}`. Experts that are not cached yet are trained in
parallel worker processes with one thread each: on models this small, two one-thread jobs side
by side finish sooner than two two-thread jobs in turn (docs/nano.md).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError, DataError, PolyVisError
from polyvis.malloc import keep_freed_memory
from polyvis.nano.expert_specs import (
    DATA,
    EXPERTS,
    QUICK_DATA,
    QUICK_SETTINGS,
    RECIPE_VERSION,
    SETTINGS,
    SYNTH_KEYS,
    VISION_EXPERTS,
    settings_class,
    trainer,
)
from polyvis.paths import atomic_dir, cache_root, checked_cache_root, write_json_atomic
from polyvis.progress import progress_bar


def resolve_settings(name: str, settings: dict[str, Any] | None, quick: bool) -> dict[str, Any]:
    """Defaults (full or quick) with the caller's top-level keys on top, validated and complete."""
    from polyvis.nano._common import parse_settings

    base = copy.deepcopy((QUICK_SETTINGS if quick else SETTINGS)[name])
    base.update(copy.deepcopy((settings or {}).get(name) or {}))
    return parse_settings(settings_class(name), base, f"settings.{name}").model_dump()


def resolve_data(data: str | Path | list | dict | None, name: str, quick: bool) -> dict[str, Any]:
    """One expert's data: {"dirs": [...]} (existing folders) or {"synthetic": [options, ...]}.

    data: None (the defaults), folder(s) for every expert, or {expert: folder(s) | [options]}.
    """
    field = "data"
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(EXPERTS))
        if unknown:
            raise ConfigError(f"data.{unknown[0]}", f"unknown expert; valid: {', '.join(EXPERTS)}")
        field, data = f"data.{name}", data.get(name)
    if data is None:
        data = copy.deepcopy((QUICK_DATA if quick else DATA)[name])
    items = [data] if isinstance(data, (str, Path)) else list(data)
    if items and all(isinstance(x, dict) for x in items):
        sets = []
        for i, opts in enumerate(items):
            bad = sorted(set(opts) - SYNTH_KEYS)
            if bad or "families" not in opts or "n" not in opts:
                what = f"unknown option {bad[0]!r}" if bad else "needs 'families' and 'n'"
                raise ConfigError(
                    f"{field}[{i}]", f"{what} (options: {', '.join(sorted(SYNTH_KEYS))})"
                )
            sets.append({"seed": 0, "size": 64, **opts})
        return {"synthetic": sets}
    for d in items:
        if not isinstance(d, (str, Path)) or not Path(d).is_dir():
            raise ConfigError(field, f"{d}: data folder not found")
    return {"dirs": [str(Path(d).resolve()) for d in items]}


def _data_identity(spec: dict[str, Any], families: list[str]) -> Any:
    """What the cache key sees of the data: the options and the generators' version, or the
    records files' sizes and times."""
    if "synthetic" in spec:
        from polyvis.data.synthetic.cache import SYNTH_VERSION

        return {"synthetic": spec["synthetic"], "generator": SYNTH_VERSION}
    files = []
    for d in spec["dirs"]:
        for f in families:
            for split in ("train", "test"):
                p = Path(d) / f / f"{split}.jsonl"
                if p.is_file():
                    st = p.stat()
                    files.append([str(p), st.st_size, st.st_mtime_ns])
    return files


def expert_key(name: str, settings: dict[str, Any], data: dict[str, Any]) -> str:
    # fp32, the default, is left out: experts built before `precision` existed keep their keys
    settings = {k: v for k, v in settings.items() if (k, v) != ("precision", "fp32")}
    blob = {"expert": name, "recipe": RECIPE_VERSION[name], "settings": settings,
            "data": _data_identity(data, settings["families"])}  # fmt: skip
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def expert_dir(name: str, settings: dict[str, Any], data: dict[str, Any]) -> Path:
    return cache_root() / "experts" / f"{name}-{expert_key(name, settings, data)}"


# Every expert's folder holds these once built (expert.json is written last, inside the
# temporary folder); a folder that lacks one is a stale entry (a copy cut short) to rebuild.
BUILT_FILES = ("config.json", "model.safetensors", "training_log.json", "expert.json")


def is_built(path: Path) -> bool:
    return all((path / name).is_file() for name in BUILT_FILES)


def data_dirs(spec: dict[str, Any]) -> tuple[list[Path], list[Path]]:
    """(training folders, held-out folders) of a data spec; synthetic sets are generated once."""
    if "dirs" in spec:
        dirs = [Path(d) for d in spec["dirs"]]
        return dirs, dirs
    from polyvis.data.synthetic.cache import ensure_synthetic

    train, held_out = [], []
    for opts in spec["synthetic"]:
        gen = {k: v for k, v in opts.items() if k not in ("train", "eval")}
        folder = ensure_synthetic(gen, progress=False)
        if opts.get("train", True):
            train.append(folder)
        if opts.get("eval", True):
            held_out.append(folder)
    return train, held_out


def build_expert(
    name: str,
    settings: dict[str, Any],
    data: dict[str, Any],
    out: Path,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one expert into `out` (via a temporary folder, so `out` is complete or absent; when
    another process finished `out` first, its copy is kept).

    report gets {"event": "stage", "stage": "data"} and {"event": "step", "step", "total", "loss"}.
    """
    report = report or (lambda event: None)
    report({"event": "stage", "stage": "data"})
    dirs, held_out = data_dirs(data)
    train = trainer(name)

    def step(i: int, total: int, loss: float) -> None:
        report({"event": "step", "step": i, "total": total, "loss": loss})

    with atomic_dir(out, complete=is_built) as tmp:
        log = train(dirs, tmp, settings, progress=False, callback=step, eval_dirs=held_out)
        info = {"expert": name, "settings": settings, "data": data,
                "data_dirs": [str(d) for d in dirs], "final_loss": log["final_loss"],
                "eval": log["eval"]}  # fmt: skip
        write_json_atomic(tmp / "expert.json", info)
    return log


def ensure_experts(
    data: str | Path | list | dict | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    quick: bool = False,
    progress: bool = True,
    parallel: bool | None = None,
    names: tuple[str, ...] | list[str] = VISION_EXPERTS,
) -> dict[str, Path]:
    """Build the experts that are not cached yet; return {name: checkpoint dir}.

    data: None (generate the default synthetic sets, DATA), a data folder or list of folders
    (FAMILY/SPLIT.jsonl inside) for both, or {expert: folder(s) | [ensure_synthetic options]}.
    settings: {expert name: top-level settings that replace the defaults}.
    parallel: train in one-thread worker processes at once (default: when 2+ CPUs and 2+ to build).
    """
    for field, given in (("names", list(names)), ("settings", list(settings or {}))):
        for name in given:
            if name not in EXPERTS:
                raise ConfigError(field, f"unknown expert {name!r}; valid: {', '.join(EXPERTS)}")
    checked_cache_root()
    plan, specs = {}, {}
    for name in names:
        resolved = resolve_settings(name, settings, quick)
        specs[name] = resolve_data(data, name, quick)
        plan[name] = (resolved, expert_dir(name, resolved, specs[name]))
    todo = [n for n in names if not is_built(plan[n][1])]
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    if todo:
        with _Bars(progress) as bars:
            if parallel and len(todo) >= 2:
                _build_parallel({n: (*plan[n], specs[n]) for n in todo}, bars)
            else:
                for n in todo:
                    build_expert(n, plan[n][0], specs[n], plan[n][1], bars.reporter(n))
    return {n: plan[n][1] for n in names}


class _Bars:
    """One rich progress bar per expert, fed by reports from this process or from workers."""

    def __init__(self, enabled: bool):
        from polyvis.nano._common import LOSS_FIELD

        self.progress = progress_bar(enabled, fields=LOSS_FIELD)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, name: str, event: dict[str, Any]) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=None, loss=float("nan"))
        task = self.tasks[name]
        if event["event"] == "stage":
            self.progress.update(task, description=f"{name} ({event['stage']})")
        elif event["event"] == "step":
            self.progress.update(task, description=name, total=event["total"],
                                 completed=event["step"], loss=event["loss"])  # fmt: skip

    def reporter(self, name: str) -> Callable[[dict[str, Any]], None]:
        return lambda event: self.update(name, event)


def _build_parallel(plan: dict[str, tuple[dict, Path, dict]], bars: _Bars) -> None:
    """One `python -m polyvis.nano.experts JOB` worker per expert, one thread each; they report
    progress and errors as JSON lines on stdout (stderr goes to a temporary file)."""
    events: queue.Queue = queue.Queue()
    procs: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with contextlib.ExitStack() as stack:
        logs = {
            n: stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8")) for n in plan
        }
        for name, (resolved, out, spec) in plan.items():
            job = json.dumps({"name": name, "settings": resolved, "data": spec, "out": str(out)})
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "polyvis.nano.experts", job],
                stdout=subprocess.PIPE, stderr=logs[name], text=True, env=env,
            )  # fmt: skip
            threading.Thread(target=_pump, args=(name, procs[name], events), daemon=True).start()
        errors = _follow(procs, events, bars)
        for name, proc in procs.items():
            if name in errors:
                kind, message = errors[name]["kind"], errors[name]["message"]
                raise _ERRORS.get(kind, PolyVisError)(message)
            if proc.returncode != 0:
                logs[name].seek(0)
                tail = "\n".join(logs[name].read().strip().splitlines()[-15:])
                raise RuntimeError(f"building {name} failed (exit {proc.returncode}):\n{tail}")


def _follow(
    procs: dict[str, subprocess.Popen], events: queue.Queue, bars: _Bars
) -> dict[str, dict]:
    """Show the workers' progress until all have ended; returns the errors they reported."""
    errors: dict[str, dict] = {}
    running = set(procs)
    try:
        while running:
            name, msg = events.get()
            if msg is None:  # the worker closed its stdout: it has ended
                running.discard(name)
                procs[name].wait()
            elif msg.get("event") == "error":
                errors[name] = msg
            else:
                bars.update(name, msg)
    finally:
        for proc in procs.values():  # still running only after an interrupt
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return errors


def _pump(name: str, proc: subprocess.Popen, events: queue.Queue) -> None:
    for line in proc.stdout:
        try:
            events.put((name, json.loads(line)))
        except json.JSONDecodeError:
            continue  # stray output of a library
    events.put((name, None))


# what the parent raises for a worker's reported error (kind: the worker's exception class)
_ERRORS: dict[str, Callable[[str], PolyVisError]] = {
    "ConfigError": lambda message: ConfigError("", message),
    "DataError": DataError,
}


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds, so atomic_dir removes the half-built temporary folder


def _worker(job_text: str) -> int:
    """Worker entry: train one expert, report stages, steps and errors as JSON lines."""
    job = json.loads(job_text)
    keep_freed_memory()
    # the parent stops its workers with SIGTERM (Ctrl-C, an error in another worker)
    signal.signal(signal.SIGTERM, _stop)

    def report(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    try:
        build_expert(job["name"], job["settings"], job["data"], Path(job["out"]), report)
    except PolyVisError as err:
        report({"event": "error", "kind": type(err).__name__, "message": str(err)})
        return 2
    except OSError as err:  # an unwritable cache, a full disk: one line, as the CLI says it
        where = f"{err.filename}: " if err.filename else ""
        report({"event": "error", "kind": "OSError", "message": f"{where}{err.strerror or err}"})
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
