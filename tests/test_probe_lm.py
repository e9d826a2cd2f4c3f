"""A randomly initialised LM whose config transformers accepts but whose layers do not fit is
refused when the model is built, naming the field, and the check changes nothing it builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.models import build as build_mod
from polyvis.models.build import build_model

CFG = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"
# 30 wide over 4 heads: head_dim 7, which the rotary embedding cannot split in halves
ODD = "model.llm.config={model_type: qwen2, hidden_size: 30, num_attention_heads: 4, " \
      "num_key_value_heads: 2, intermediate_size: 64, num_hidden_layers: 1}"  # fmt: skip


def test_an_lm_whose_layers_do_not_fit_is_named_when_built():
    # it used to build, then fail at the first training step with a shape RuntimeError
    with pytest.raises(ConfigError, match=r"^model\.llm\.config: the LM it builds fails on its"):
        build_model(load_config(CFG, [ODD]))


def test_the_check_leaves_the_built_model_as_it_was(monkeypatch):
    torch.manual_seed(0)
    checked, _ = build_model(load_config(CFG))
    monkeypatch.setattr(build_mod, "probe_lm", lambda lm, field: None)
    torch.manual_seed(0)
    unchecked, _ = build_model(load_config(CFG))
    a, b = checked.state_dict(), unchecked.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checked.training == unchecked.training


def test_a_vary_nano_decoder_that_does_not_fit_is_named():
    from polyvis.nano.vary_model import VarySettings, build_vary

    bad = {"model_type": "qwen2", "hidden_size": 30, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 64, "num_hidden_layers": 1}  # fmt: skip
    with pytest.raises(ConfigError, match=r"^decoder: the LM it builds fails on its first"):
        build_vary(VarySettings(decoder=bad, size=32), vocab_size=40, ctc_classes=40)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.llm.config={model_type: qwen2, hidden_size: x}", "model.llm.config"),
        (
            "model.encoders=[{name: c, config: {model_type: clip_vision_model, hidden_size: x}}]",
            "model.encoders[0].config",
        ),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line(override, field):
    # huggingface_hub's strict-dataclass errors are not ValueErrors: they were tracebacks
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(field)}: Field 'hidden_size' expected int"
    ):
        build_model(load_config(CFG, [override]))
