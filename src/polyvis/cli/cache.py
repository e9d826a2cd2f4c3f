"""`polyvis cache-features`: compute the frozen encoders' features of the train and val images
once; `polyvis cache-clean`: remove what killed processes left in the cache."""

from __future__ import annotations

import argparse

from polyvis.cli._model_args import add_set_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache-features",
        help="fill the feature cache for a config (what train.cache_features: true uses)",
    )
    p.add_argument("config", help="YAML config, e.g. configs/nano-tiny.yaml")
    add_set_argument(p)
    p.add_argument(
        "--device", default=None, help="where the encoders run (default: cuda if present)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache_features)
    c = sub.add_parser(
        "cache-clean",
        help="remove the temporary folders killed builds left in POLYVIS_CACHE (.NAME.PID.tmp)",
    )
    c.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                   help="only those untouched this long (default 24: no build runs that long)")  # fmt: skip
    c.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    c.set_defaults(func=cmd_cache_clean)


def cmd_cache_clean(args: argparse.Namespace) -> int:
    import shutil

    from polyvis.errors import ConfigError
    from polyvis.paths import cache_leftovers, checked_cache_root

    if not args.older_than >= 0:  # also refuses nan
        raise ConfigError("--older-than", f"must be a number of hours >= 0, got {args.older_than}")
    root = checked_cache_root()
    found = cache_leftovers(root, args.older_than * 3600)
    for path in found:
        print(("would remove " if args.dry_run else "removing ") + str(path))
        if not args.dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    print(f"{len(found)} leftover(s) in {root}" + (" (dry run)" if args.dry_run else ""))
    return 0


def cmd_cache_features(args: argparse.Namespace) -> int:
    from accelerate.utils import set_seed

    from polyvis.cli._model_args import resolve_device
    from polyvis.config import load_config
    from polyvis.errors import ConfigError
    from polyvis.train.feature_cache import check_cacheable, fill_for_config
    from polyvis.train.loop import _start_model

    cfg = load_config(args.config, args.set)
    check_cacheable(cfg)  # before building anything
    if not cfg.data.train and not cfg.data.val and cfg.data.synthetic is None:
        # it said "0 distinct image(s)" and succeeded: a silent no-op
        raise ConfigError(
            "data", "names no records (data.train, data.val or data.synthetic): nothing to cache"
        )
    if cfg.data.synthetic is not None:  # generated here, so that --no-progress covers it too
        from polyvis.data.synthetic.cache import ensure_synthetic

        ensure_synthetic(cfg.data.synthetic, progress=not args.no_progress)
    device = resolve_device(args.device)
    set_seed(cfg.train.seed)  # as train() does: randomly initialised encoders get the same weights
    model, processor = _start_model(cfg)
    cache, stats = fill_for_config(cfg, model, processor, device, progress=not args.no_progress)
    for entry, store, fp in zip(model.config.encoders, cache.stores, cache.fingerprints):
        print(f"{entry['name']}: fingerprint {fp}, {len(store)} image(s) in {store.dir}")
    print(
        f"{stats['images']} distinct image(s); computed {stats['computed']} encoder feature set(s), "
        f"{stats['unreadable']} unreadable"
    )
    return 0
