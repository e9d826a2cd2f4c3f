"""`polyvis nano experts | vary | clip`: the nano world's experts (vision encoders built here).

polyvis nano experts build [--data DIR[,DIR]] [--quick] [--set vary-nano.steps=300]
    (clip-nano, vary-nano and lm-nano, the fair protocol's LM)
polyvis nano experts list
polyvis nano vary train --images-from DATA[,DATA] --out DIR [--init PATH | --config JSON] --steps N
polyvis nano clip train --images-from DATA[,DATA] --out DIR --steps N
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `nano` command group: `experts`, `vary` and `clip`."""
    n = subparsers.add_parser("nano", help="the nano experts: build, list, or train one yourself")
    n.set_defaults(func=lambda a: _usage(n))
    sub = n.add_subparsers(dest="group", metavar="GROUP")

    e = sub.add_parser("experts", help="build (or reuse) the nano experts and lm-nano, cached")
    e.set_defaults(func=lambda a: _usage(e))
    esub = e.add_subparsers(dest="action", metavar="ACTION")
    eb = esub.add_parser("build", help="train the experts not cached yet (in parallel)")
    eb.add_argument("--data", help="data folder(s), comma-separated (default: generate synthetic)")
    eb.add_argument("--quick", action="store_true", help="tiny experts in seconds (tests, smoke)")
    eb.add_argument("--set", action="append", default=[], metavar="EXPERT.KEY=VALUE",
                    help="a setting, e.g. vary-nano.steps=300 (repeatable; values are YAML)")  # fmt: skip
    eb.add_argument("--sequential", action="store_true", help="one after the other, in-process")
    eb.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    eb.set_defaults(func=_experts_build)
    el = esub.add_parser("list", help="the cached experts with their measured numbers")
    el.set_defaults(func=_experts_list)

    vt = _train_parser(
        sub.add_parser("vary", help="vary-nano: a document vision encoder, Vary-tiny style"),
        "train an encoder + small decoder to transcribe images; save the encoder",
        "ocr,latex,table,chart",
    )
    src = vt.add_mutually_exclusive_group()
    src.add_argument("--init", help="start from this checkpoint dir (CLIP: its vision tower)")
    src.add_argument("--config", help="a transformers vision config as JSON / YAML (or a file)")
    vt.add_argument("--decoder", help="the decoder's causal-LM config as JSON / YAML (or a file)")
    vt.add_argument("--tokenizer", choices=["chars", "bpe"], help="decoder vocabulary")
    vt.add_argument(
        "--aux-ctc",
        type=float,
        help="weight of the auxiliary CTC loss (per column for one-line text, raster order for "
        "markdown tables; 0 = off)",
    )
    vt.add_argument(
        "--aux-families", help="families the CTC loss reads, comma-separated (default ocr)"
    )
    vt.add_argument("--max-target-len", type=int, help="transcript tokens kept")
    vt.set_defaults(func=_vary_train)

    ct = _train_parser(
        sub.add_parser("clip", help="clip-nano: a tiny CLIP trained on scene captions"),
        "train a CLIPModel contrastively; save model + tokenizer + processor",
        "scene",
    )
    # the mapping replaces clip-nano's tower config: keys it leaves out take transformers' CLIP
    # defaults (12 layers each), so the help says so
    ct.add_argument("--vision", help="the CLIP vision config as JSON / YAML (replaces clip-nano's; "
                    "keys left out take CLIPVisionConfig's defaults)")  # fmt: skip
    ct.add_argument("--text", help="the CLIP text config as JSON / YAML (replaces clip-nano's; "
                    "keys left out take CLIPTextConfig's defaults)")  # fmt: skip
    ct.add_argument("--qa-texts", type=float, help="chance a step shows 'question answer' text")
    ct.set_defaults(func=_clip_train)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _train_parser(
    group: argparse.ArgumentParser, action_help: str, families: str
) -> argparse.ArgumentParser:
    """An expert's `train` action with the options both trainers take."""
    group.set_defaults(func=lambda a: _usage(group))
    p = group.add_subparsers(dest="action", metavar="ACTION").add_parser("train", help=action_help)
    p.add_argument("--images-from", required=True, help="data folder(s) with FAMILY/SPLIT.jsonl")
    p.add_argument("--families", default=families, help=f"comma-separated (default {families})")
    p.add_argument("--eval-from", help="held-out data folder(s) (default: --images-from)")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint dir")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--eval-samples", type=int, help="held-out samples measured at the end")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _names(text: str) -> list[str]:
    """The items of a comma-separated option, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _given(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    """The options the user gave (others keep the trainer's defaults)."""
    from polyvis.errors import ConfigError

    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    out["families"] = _names(args.families)
    if not out["families"]:
        raise ConfigError("--families", "names no family (e.g. --families ocr,table)")
    return out


# a trainer's settings field -> the flag that sets it, so that an error names what was typed
_FLAGS = {"encoder": "--config", "encoder.path": "--init", "init": "--init", "decoder": "--decoder", "vision": "--vision",
          "text": "--text", "aux_families": "--aux-families", "aux_ctc": "--aux-ctc",
          "max_target_len": "--max-target-len", "qa_texts": "--qa-texts", "steps": "--steps",
          "batch_size": "--batch-size", "lr": "--lr", "size": "--size", "seed": "--seed",
          "eval_samples": "--eval-samples", "threads": "--threads", "families": "--families",
          "text/vision": "--text/--vision", "encoder/decoder": "--config/--decoder"}  # fmt: skip


_KEYS = ["steps", "batch_size", "lr", "size", "eval_samples", "seed", "threads"]


def _vary_train(args: argparse.Namespace) -> int:
    from polyvis.nano._common import read_mapping
    from polyvis.nano.vary import train_vary

    settings = _given(args, _KEYS + ["init", "tokenizer", "aux_ctc", "max_target_len"])
    if args.config is not None:
        settings["encoder"] = read_mapping(args.config, "--config")
    if args.decoder is not None:
        settings["decoder"] = read_mapping(args.decoder, "--decoder")
    if args.aux_families is not None:
        settings["aux_families"] = _names(args.aux_families)
        _check_aux_families(settings["aux_families"], settings["families"])
    return _train(train_vary, args, settings)


def _check_aux_families(aux: list[str], families: list[str]) -> None:
    """A CTC family the encoder does not train on would silently add no loss at all."""
    from polyvis.errors import ConfigError

    missing = [f for f in aux if f not in families]
    if missing:
        raise ConfigError(
            "--aux-families", f"{', '.join(missing)} not among --families ({', '.join(families)})"
        )


def _clip_train(args: argparse.Namespace) -> int:
    from polyvis.nano._common import read_mapping
    from polyvis.nano.clip import train_clip

    settings = _given(args, _KEYS + ["qa_texts"])
    for key in ("vision", "text"):
        if getattr(args, key) is not None:
            settings[key] = read_mapping(getattr(args, key), f"--{key}")
    return _train(train_clip, args, settings)


def _train(train: Callable[..., dict[str, Any]], args: argparse.Namespace, settings: dict) -> int:
    """Run one expert's trainer with the options every `train` action shares; print its summary."""
    from polyvis.errors import ConfigError
    from polyvis.paths import atomic_dir, check_replaceable

    dirs = _dirs(args.images_from, "--images-from")
    eval_dirs = _dirs(args.eval_from, "--eval-from") if args.eval_from else None
    check_replaceable(args.out, "training_log.json", "expert checkpoint")  # before training
    try:
        # built aside, then put in place whole: a rerun into the same --out leaves nothing of
        # the last run (a bpe run's decoder/ stayed beside a chars run's encoder), and a killed
        # run leaves no half-written checkpoint
        with atomic_dir(args.out, replace=True) as tmp:
            log = train(dirs, tmp, settings, progress=not args.no_progress, eval_dirs=eval_dirs)
    except ConfigError as err:
        flag = _FLAGS.get(err.field) or _FLAGS.get(err.field.split(".")[0].split("[")[0])
        if flag is None:
            raise
        raise ConfigError(flag, err.message) from None
    _summary(log, args.out)
    return 0


def _dirs(text: str, flag: str) -> list[Path]:
    from polyvis.errors import ConfigError

    dirs = [Path(d) for d in _names(text)]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(flag, f"{d}: folder not found")
    return dirs


def _summary(log: dict[str, Any], out: Path | None) -> None:
    secs = log.get("train_seconds")
    after = f" after {secs:.0f} s of training" if secs is not None else ""
    print(f"{log['expert']}: final loss {log['final_loss']:.4f}{after}")
    for key, value in log["eval"].items():
        if isinstance(value, dict) and value:
            shown = {k: round(v, 3) for k, v in value.items() if isinstance(v, (int, float))}
            print(f"  {key}: {json.dumps(shown)}")
    if out is not None:
        print(f"saved to {out} (training log: {Path(out) / 'training_log.json'})")


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    from polyvis.errors import ConfigError

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise ConfigError("--set", f"{item!r} must look like EXPERT.KEY=VALUE")
        out.setdefault(name, {})[field] = yaml.safe_load(raw)
    return out


def _experts_build(args: argparse.Namespace) -> int:
    from polyvis.nano.experts import EXPERTS, ensure_experts

    data = _names(args.data) if args.data else None
    paths = ensure_experts(
        data,
        _parse_sets(args.set),
        quick=args.quick,
        progress=not args.no_progress,
        parallel=not args.sequential,
        names=EXPERTS,
    )
    for path in paths.values():
        _show(path)
    return 0


def _experts_list(args: argparse.Namespace) -> int:
    from polyvis.paths import checked_cache_root

    root = checked_cache_root() / "experts"
    found = sorted(root.glob("*/expert.json")) if root.is_dir() else []
    if not found:
        print(f"no experts cached under {root} (build them: polyvis nano experts build)")
        return 0
    for info in found:
        _show(info.parent, settings=True)
    return 0


def _show(folder: Path, settings: bool = False) -> None:
    """An expert's summary from its training log (else its expert.json), its settings that
    differ from the default build's, and its path; an unreadable entry is said in one line."""
    info = _read_json(folder / "expert.json")
    log = _read_json(folder / "training_log.json") or info
    if not log or not {"expert", "final_loss", "eval"} <= set(log):
        print(f"{folder.name}: unreadable entry (no valid training_log.json or expert.json)")
    else:
        _summary(log, None)
        if settings and isinstance((info or {}).get("settings"), dict):
            print(f"  settings: {_settings_line(log['expert'], info['settings'])}")
    print(f"  path: {folder}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _settings_line(name: str, settings: dict[str, Any]) -> str:
    """`default`, `--quick`, or the KEY=VALUE pairs (as --set takes them) that differ from the
    default build's: what tells two cached entries of one expert apart."""
    from polyvis.errors import PolyVisError
    from polyvis.nano.experts import resolve_settings

    try:
        full, quick = (resolve_settings(name, None, q) for q in (False, True))
    except (KeyError, PolyVisError):  # an expert this version does not know
        return "unknown expert"
    if settings == full:
        return "default"
    if settings == quick:
        return "--quick"
    base, label = (quick, "--quick, ") if _distance(settings, quick) < _distance(settings, full) \
        else (full, "")  # fmt: skip
    changed = [f"{k}={json.dumps(v)}" for k, v in sorted(settings.items()) if base.get(k) != v]
    return label + ", ".join(changed)


def _distance(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b))
