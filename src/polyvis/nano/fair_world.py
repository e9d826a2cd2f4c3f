"""What the fair protocol trains and scores on: the budget, the LM, the val set and the test set.

Nano (`nano: true`): the demo's world and budget (polyvis.nano.demo), lm-nano as every cell's
LM, the val split's scored questions of the training data (data seed 0), and a test set that is
generated only when every choice is made: `test_images` images per family, all in its test
split, from `test_data_seed` (default 1; never 0, the seed of the training and val data and of
every expert's data). Real configs (`base:`): the base's LM and budget, its `data.val` to choose
on and `eval.files` (or its `data.test`) for the final numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError, PolyVisError

# The align stage's share of the steps (LLaVA's first stage, LM frozen): 200 of the nano budget's
# 1000, a little under LLaVA-1.5's share (why: docs/protocol.md)
ALIGN_SHARE = 0.2
TEST_DATA_SEED = 1
TEST_IMAGES = 400  # per family: at least 400 scored questions in every family
VAL_LIMIT = 150  # val questions per family: every image of the smallest families
# Text tokens every nano cell reads: the demo's max_length of 256 less its 64 image tokens and the
# two image markers. A cell's max_length is its own image tokens + 2 + this, so a cell with more
# image tokens (dino-nano's 16x16 grid) loses no text to them.
TEXT_TOKENS = 190


@dataclass
class FairWorld:
    base: dict[str, Any]  # a run's config; its model is replaced per cell
    encoders: dict[str, dict[str, Any]]  # encoder entries by name
    llm: dict[str, Any]  # every cell's LM
    val_files: list[Path]
    val_limit: int | None
    test_limit: int | None
    align: dict[str, Any] | None  # the align stage's config sections
    arm: dict[str, Any]  # arm, warm_start, balance, balance_images
    root: Path  # where this arm writes: OUT, or OUT/sensitivity-...
    info: dict[str, Any] = field(default_factory=dict)  # data folder and seed, budget
    warm_lm: dict[str, Any] | None = None  # nano: vary-nano's decoder
    test_options: dict[str, Any] | None = None  # nano: the test set's generator options
    test_files: list[Path] = field(default_factory=list)
    jobs: int = 2
    text_tokens: int | None = None  # nano: each cell's max_length = its image tokens + 2 + this
    variants: tuple[str, ...] = ()  # `variants`: encoders derived from the base's (fair_variants)
    # whether make_test_set ran: a real base names its test files from the start, unread till then
    made: bool = False
    progress: bool = False  # bars for the data it generates

    def make_test_set(self) -> list[Path]:
        """The test questions (nano: generated now, into the data cache). Call it only once
        every choice is made: nothing else in the protocol reads the test set."""
        if self.test_options is not None:
            from polyvis.data.synthetic.cache import ensure_synthetic
            from polyvis.nano.tasks import select_split

            folder = ensure_synthetic(self.test_options, progress=self.progress, workers=self.jobs)
            files = select_split(folder, list(self.test_options["families"]), "test")
            for f in files:
                n = sum(1 for line in f.read_text().splitlines() if line.strip())
                if self.test_limit and n < self.test_limit:
                    raise ConfigError(
                        "test_images", f"{f}: {n} scored questions, fewer than {self.test_limit}"
                    )
            self.test_files = files
        self.made = True
        return self.test_files

    def describe(self, settings: list[Any], seeds: list[int], cells: list[Any]) -> dict[str, Any]:
        """protocol.json: how the grid is run (its candidate settings, seeds and cells), and
        where every set comes from."""
        test: dict[str, Any] = {"limit": self.test_limit, "made": self.made}
        if self.test_options is not None:
            from polyvis.data.synthetic.cache import synthetic_dir

            opts = self.test_options
            test.update(folder=str(synthetic_dir(opts)), seed=opts["seed"], images=opts["n"])
        test["files"] = [str(f) for f in self.test_files]
        return {
            "protocol": "fair",
            **self.arm,
            **self.info,
            "lm": self.llm,
            "val": {"files": [str(f) for f in self.val_files], "limit": self.val_limit},
            "test": test,
            "align": self.align,
            "candidates": [s.values for s in settings],
            "seeds": seeds,
            "cells": {c.name: c.meta for c in cells},
        }


def _arm(spec: dict[str, Any], out: Path, balance_images: int) -> tuple[dict[str, Any], Path]:
    arm = spec.get("arm", "main")
    if arm not in ("main", "sensitivity"):
        raise ConfigError("arm", f"must be main or sensitivity, got {arm!r}")
    flags = {k: spec.get(k, False) for k in ("warm_start", "balance")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        if value and arm == "main":
            raise ConfigError(key, "only in the sensitivity arm (arm: sensitivity)")
    info = {"arm": arm, **flags, "balance_images": balance_images}
    if arm == "main":
        return info, out
    return info, out / "-".join(["sensitivity", *(k for k, v in flags.items() if v)])


def align_steps(total: int, share: Any) -> int:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
        raise ConfigError("align_share", f"must be a fraction in [0, 1), got {share!r}")
    return max(1, round(total * share)) if share else 0


# the nano world's encoder names (polyvis.nano.world), which variants derive from
NANO_ENCODERS = ("clip", "dino", "vary")


def make_world(spec: dict[str, Any], out: Path, progress: bool = False) -> FairWorld:
    from polyvis.nano.fair_variants import add_variants, world_families

    world_families(spec)  # the `families` option is checked before anything is built
    if spec.get("nano"):  # and the variants' own fields, on stand-ins for the experts to come
        add_variants(spec, {n: {"name": n, "path": f"<{n}-nano>"} for n in NANO_ENCODERS})
    world = _nano_world(spec, out, progress) if spec.get("nano") else _real_world(spec, out)
    world.encoders = add_variants(spec, world.encoders)
    world.variants = tuple(spec.get("variants") or ())
    return world


def _eval_section(spec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    ev = spec.get("eval") or {}
    if not isinstance(ev, dict):  # a list or a string would be read as its items' names
        raise ConfigError("eval", f"give its options by key, e.g. {{{keys[0]}: ...}}, got {ev!r}")
    bad = sorted(set(ev) - set(keys))
    if bad:
        valid = ", ".join(keys)
        raise ConfigError(f"eval.{bad[0]}", f"not a fair-protocol option here; valid: {valid}")
    return ev


def _limit(ev: dict[str, Any], key: str, default: int | None) -> int | None:
    value = ev.get(key, default)
    if value is not None and not int_at_least(value, 1):
        raise ConfigError(f"eval.{key}", f"must be a positive integer, got {value!r}")
    return value


def _difficulty(value: Any) -> dict[str, str]:
    from polyvis.data.synthetic.base import FAMILIES as REGISTERED
    from polyvis.data.synthetic.common import parse_difficulty

    if not isinstance(value, dict) or not value:
        raise ConfigError("difficulty", f"give levels by family, e.g. {{ocr: easy}}, got {value!r}")
    REGISTERED.discover()
    out = {}
    for family, level in value.items():
        if family not in REGISTERED:
            valid = ", ".join(REGISTERED.names())
            raise ConfigError(f"difficulty.{family}", f"unknown family; valid: {valid}")
        out[family] = parse_difficulty(level, f"difficulty.{family}")
    return out


def int_at_least(value: Any, low: int) -> bool:
    """An integer (not a bool) of at least `low`: what every count and seed option must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _nano_world(spec: dict[str, Any], out: Path, progress: bool = False) -> FairWorld:
    from polyvis.data.synthetic.cache import synthetic_dir
    from polyvis.nano import budget as nano_budget
    from polyvis.nano import world as nano_world
    from polyvis.nano.experts import EXPERTS, ensure_experts
    from polyvis.nano.fair_variants import family_data, levels_of, world_families
    from polyvis.nano.tasks import select_split

    quick, jobs = bool(spec.get("quick")), int(spec.get("jobs", 2))
    budget = dict(nano_budget.QUICK_BUDGET if quick else nano_budget.BUDGET)
    if "steps" in spec:  # every cell's budget: align and fine-tuning steps together
        steps = spec["steps"]
        if not int_at_least(steps, 2):
            raise ConfigError("steps", f"must be an integer of at least 2, got {steps!r}")
        budget["steps"] = steps
    budget["align_steps"] = align_steps(budget["steps"], spec.get("align_share", ALIGN_SHARE))
    if "difficulty" in spec:  # the world's data, per family (the experts keep their own data)
        budget["difficulty"] = {**budget.get("difficulty", {}), **_difficulty(spec["difficulty"])}
    if "precision" in spec:  # the experts' and the runs': a new world, with its own experts
        if spec["precision"] not in nano_budget.PRECISIONS:
            raise ConfigError("precision", f"must be fp32 or bf16, got {spec['precision']!r}")
        budget["precision"] = spec["precision"]
    if "expert_seed" in spec:  # a rebuild of every expert (lm-nano too) from the same recipes
        if not int_at_least(spec["expert_seed"], 0):
            got = spec["expert_seed"]
            raise ConfigError("expert_seed", f"must be a non-negative integer, got {got!r}")
        budget["expert_seed"] = spec["expert_seed"]
    arm, root = _arm(spec, out, int(budget.get("balance_images", 64)))
    ev = _eval_section(spec, ("val_limit", "test_limit"))  # it makes its own val and test sets
    seed = spec.get("test_data_seed", TEST_DATA_SEED)
    if not int_at_least(seed, 1):
        raise ConfigError(
            "test_data_seed", f"must be a positive integer (0 is the training data's), got {seed!r}"
        )
    n_test = spec.get("test_images", 8 if quick else TEST_IMAGES)
    if not int_at_least(n_test, 1):
        raise ConfigError("test_images", f"must be a positive integer, got {n_test!r}")
    experts = ensure_experts(  # every expert at once
        settings=nano_world.expert_settings(budget), quick=quick, progress=progress, names=EXPERTS
    )
    # the six families' world (the corpus, lm-nano's text) takes the levels of those six only;
    # a level for another family (`families`) goes to that family's data below
    six = {**budget, "difficulty": levels_of(budget.get("difficulty"), nano_budget.FAMILIES)}
    world = nano_world.prepare_world(root, six, quick, workers=jobs, progress=progress)
    data_dir = world.train[0].parent.parent  # the selections sit beside the cached records
    options = {"families": nano_budget.FAMILIES, "n": budget["n"], "seed": 0, "size": 64,
               "difficulty": six["difficulty"]}  # fmt: skip
    if synthetic_dir(options) != data_dir:
        raise PolyVisError(f"{data_dir} is not the world's data folder {synthetic_dir(options)}")
    families, train = world_families(spec), world.train
    if families != nano_budget.FAMILIES:  # `families`: the cells train, choose and test on these
        data_dir, train, options = family_data(families, budget, jobs, progress)
    every = {**world.experts, **experts}
    names = ["clip", "vary"] + (["dino"] if "dino-nano" in every else [])
    base = nano_world.run_config(
        names, "concat-channel", every, train, world.corpus, budget, quick, 0
    )
    info = {
        "data": {
            "folder": str(data_dir),
            "seed": 0,
            "train": [str(p) for p in train],
            "difficulty": budget.get("difficulty", "medium"),
        },  # fmt: skip
        "budget": {k: budget[k] for k in ("steps", "align_steps", "batch_size", "lr", "lr_llm")},
    }
    if budget["precision"] != "fp32":
        info["budget"]["precision"] = budget["precision"]
    if budget.get("expert_seed"):
        info["budget"]["expert_seed"] = budget["expert_seed"]
    if families != nano_budget.FAMILIES:
        info["data"]["families"] = families
    return FairWorld(
        base=base,
        encoders={e["name"]: e for e in base["model"]["encoders"]},
        llm={"path": str(experts["lm-nano"])},
        val_files=select_split(data_dir, families, "val"),
        val_limit=_limit(ev, "val_limit", budget["eval_limit"] if quick else VAL_LIMIT),
        test_limit=_limit(ev, "test_limit", budget["eval_limit"]),
        align=nano_world.align_stage(budget),
        arm=arm,
        root=root,
        info=info,
        warm_lm=base["model"]["llm"],
        test_options={**options, "seed": seed, "n": n_test, "splits": {"test": 1.0}},
        jobs=jobs,
        text_tokens=TEXT_TOKENS,
        progress=progress,
    )


def _real_world(spec: dict[str, Any], out: Path) -> FairWorld:
    from polyvis.config import load_config

    # `steps` and `difficulty` would be ignored here: the base sets its budget and its data
    nano_keys = ("test_data_seed", "test_images", "arm", "precision", "expert_seed", "steps",
                 "difficulty")  # fmt: skip
    nano_only = [k for k in nano_keys if k in spec]
    if nano_only:
        why = {"precision": "; a base config sets train.mixed_precision",
               "steps": "; a base config sets train.max_steps",
               "difficulty": "; a base config names its records files"}  # fmt: skip
        raise ConfigError(
            nano_only[0], f"nano ablations only (nano: true){why.get(nano_only[0], '')}"
        )
    src = spec["base"]
    cfg = load_config(src) if isinstance(src, str) else load_config(dict(src))
    base = cfg.model_dump(mode="json", exclude_none=True)
    if not base["data"]["val"]:
        raise ConfigError("base.data.val", "the fair protocol chooses on val: name its files")
    ev = _eval_section(spec, ("files", "limit", "val_limit", "test_limit"))
    files = ev.get("files", base["data"]["test"])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError("eval.files", f"give a list of records files, got {files!r}")
    test = [Path(f) for f in files]
    if not test:
        raise ConfigError("eval.files", "no test records files (eval.files or base data.test)")
    steps = int(base["train"]["max_steps"])
    n_align = align_steps(steps, spec.get("align_share", ALIGN_SHARE))
    if n_align >= steps:
        raise ConfigError("align_share", f"leaves no finetune steps of {steps}")
    base["train"].update(stage="finetune", max_steps=steps - n_align)
    align = {"train": {"max_steps": n_align, "warmup_steps": max(1, n_align // 20)}}
    arm, root = _arm(spec, out, 0)
    return FairWorld(
        base=base,
        encoders={e["name"]: e for e in base["model"]["encoders"]},
        llm=base["model"]["llm"],
        val_files=[Path(f) for f in base["data"]["val"]],
        val_limit=_limit(ev, "val_limit", None),
        test_limit=_limit(ev, "test_limit", ev.get("limit")),
        align=align if n_align else None,
        arm=arm,
        root=root,
        info={"base": src if isinstance(src, str) else "inline", "align_steps": n_align},
        test_files=test,
        jobs=int(spec.get("jobs", 2)),
    )
