"""`polyvis train --set` repeated keeps every override, and train.seed is one numpy can take."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyvis.cli import build_parser
from polyvis.config import load_config
from polyvis.errors import ConfigError

CFG = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"


def test_a_repeated_set_keeps_every_override():
    argv = ["train", str(CFG), "--out", "r", "--set", "a=1", "b=2", "--set", "c=3"]
    assert build_parser().parse_args(argv).set == ["a=1", "b=2", "c=3"]  # was ["c=3"]


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_naming_the_field(seed):
    # it used to pass the config and crash inside numpy's seeding once training started
    with pytest.raises(ConfigError, match=r"^train\.seed"):
        load_config(CFG, [f"train.seed={seed}"])
    assert load_config(CFG, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1
