"""Config: YAML in, dotted overrides, YAML out; one-line errors that name the field, in Python
and on the command line; `polyvis list` and `polyvis init-model`; the real-checkpoint presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from polyvis.cli import main
from polyvis.config import Config, dump_config, load_config
from polyvis.errors import ConfigError
from polyvis.models.adapters import ADAPTERS
from polyvis.models.fusion import FUSIONS

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"


def test_yaml_load():
    cfg = load_config(NANO_TINY)
    assert isinstance(cfg, Config)
    assert [e.name for e in cfg.model.encoders] == ["clip", "dino"]
    assert cfg.model.encoders[0].layers == [-2] and cfg.model.encoders[1].layers == "all"
    assert cfg.model.encoders[1].config["num_register_tokens"] == 2
    assert cfg.model.fusion == {"type": "concat-channel", "align": "interpolate"}
    assert (
        cfg.model.llm.config["model_type"] == "qwen2" and cfg.model.llm.tokenizer.vocab_size == 400
    )
    assert (cfg.train.stage, cfg.train.lr, cfg.data.max_length) == ("align", 1e-3, 256)


def test_dotted_overrides():
    data = yaml.safe_load(NANO_TINY.read_text())
    cfg = load_config(
        data,
        [
            "model.fusion.type=add",
            "model.encoders.0.layers=[-1]",
            "model.encoders.-1.name=dinov2",
            "model.adapter.depth=3",
            "train.lr=5e-4",
            "train.lora={r: 8}",
        ],
    )
    assert cfg.model.fusion == {"type": "add", "align": "interpolate"}
    assert cfg.model.encoders[0].layers == [-1]
    assert cfg.model.encoders[1].name == "dinov2"
    assert cfg.model.adapter == {"type": "mlp", "depth": 3}
    assert cfg.train.lr == 5e-4 and cfg.train.lora == {"r": 8}
    assert data["model"]["fusion"]["type"] == "concat-channel"  # the caller's dict is untouched
    with pytest.raises(ConfigError, match=r"^model\.encoders\.5: no such list item$"):
        load_config(NANO_TINY, ["model.encoders.5.layers=[1]"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(NANO_TINY, ["model.fusion.type"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(NANO_TINY, ["model.fusion={type: sva, grid: [2, 2]}", "train.max_steps=7"])
    path = dump_config(cfg, tmp_path / "run" / "polyvis.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.model.fusion["grid"] == [2, 2]
    assert dump_config(again, tmp_path / "second.yaml").read_text() == path.read_text()


def _missing(tmp_path: Path) -> str:
    return str(tmp_path / "no-such-checkpoint")


# (overrides, whether the error comes from build_model, field, message pattern)
ERRORS = {
    "unknown fusion": (
        ["model.fusion.type=bogus"],
        False,
        "model.fusion.type",
        "unknown fusion 'bogus'; valid: " + ", ".join(sorted(FUSIONS.names())),
    ),
    "unknown adapter option": (
        ["model.adapter.bogus=1"],
        False,
        "model.adapter.bogus",
        "adapter 'mlp' takes no such option; its options: depth, hidden",
    ),
    "bad adapter option value": (
        ["model.adapter.depth=0"],
        False,
        "model.adapter.depth",
        "greater than or equal",
    ),
    "unknown field": (["train.bogus=1"], False, "train.bogus", "unknown field"),
    "layer out of range": (
        ["model.encoders.0.layers=[5]"],
        True,
        "model.encoders[0].layers",
        r"layer 5 is out of range: the backbone has 2 layers",
    ),
    "same layer twice": (
        ["model.encoders.1.layers=[2, -1]"],
        True,
        "model.encoders[1].layers",
        "same layer twice",
    ),
    "missing encoder path": (
        ["model.encoders.0={name: clip, path: MISSING}"],
        True,
        "model.encoders[0].path",
        "cannot load .*no-such-checkpoint",
    ),
    "missing hub-like encoder path": (
        ["model.encoders.1={name: dino, path: no-such-org/no-such-model}"],
        True,
        "model.encoders[1].path",
        "cannot load 'no-such-org/no-such-model'",
    ),
    "missing llm path": (
        ["model.llm={path: MISSING}"],
        True,
        "model.llm.path",
        "cannot load .*no-such-checkpoint",
    ),
    "path and config": (
        ["model.encoders.0.path=/some/dir"],
        False,
        "model.encoders[0]",
        "give exactly one of 'path'",
    ),
    "duplicate encoder names": (
        ["model.encoders.1.name=clip"],
        False,
        "model.encoders",
        "encoder names must be unique; repeated: clip",
    ),
    "scales auto on another fusion": (
        ["model.fusion={type: add, scales: auto}"],
        False,
        "model.fusion.scales",
        "'auto' needs a concat-channel fusion over 2 or more encoders",
    ),
    "scales auto at build": (
        ["model.fusion.scales=auto"],
        True,
        "model.fusion.scales",
        "'auto' is measured when training starts",
    ),
    "scale option without auto": (
        ["model.fusion.scale_images=8"],
        False,
        "model.fusion.scale_images",
        "only used with scales: auto",
    ),
    "bad scale image count": (
        ["model.fusion.scales=auto", "model.fusion.scale_images=0"],
        False,
        "model.fusion.scale_images",
        "must be a positive integer, got 0",
    ),
    "unknown scale reference": (
        ["model.fusion.scales=auto", "model.fusion.scale_reference=vary"],
        False,
        "model.fusion.scale_reference",
        "no encoder 'vary'; valid: clip, dino",
    ),
    "missing adapter init file": (
        ["model.adapter={type: linear, init_from: MISSING}"],
        True,
        "model.adapter.init_from",
        "no-such-checkpoint: projector weights not found",
    ),
    "unknown adapter init encoder": (
        ["model.adapter={type: linear, init_from: p.safetensors, init_encoder: vary}"],
        False,
        "model.adapter.init_encoder",
        "no encoder 'vary'; valid: clip, dino",
    ),
    "adapter init encoder on an mlp": (
        ["model.adapter={type: mlp, init_from: p.safetensors, init_encoder: dino}"],
        False,
        "model.adapter.init_encoder",
        "needs a linear adapter with a bias",
    ),
    "adapter init encoder over proj_dim": (
        [
            "model.fusion.proj_dim=32",
            "model.adapter={type: linear, init_from: p.safetensors, init_encoder: dino}",
        ],
        False,
        "model.adapter.init_encoder",
        "needs a concat-channel fusion without proj_dim",
    ),
    "adapter init encoder without a file": (
        ["model.adapter={type: linear, init_encoder: dino}"],
        False,
        "model.adapter.init_encoder",
        "needs model.adapter.init_from",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_name_the_field(tmp_path, case):
    from polyvis.models.build import build_model

    overrides, at_build, field, pattern = ERRORS[case]
    overrides = [o.replace("MISSING", _missing(tmp_path)) for o in overrides]
    with pytest.raises(ConfigError) as info:
        cfg = load_config(NANO_TINY, overrides)
        assert at_build, "load_config should have refused this"
        build_model(cfg)
    err = info.value
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert "\n" not in str(err)
    assert re.search(pattern, str(err)), str(err)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_error_is_one_line(tmp_path, capsys):
    rc = main(
        [
            "init-model",
            str(NANO_TINY),
            "--out",
            str(tmp_path / "m"),
            "--set",
            "model.fusion.type=bogus",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("polyvis: error: model.fusion.type: unknown fusion 'bogus'")
    assert not (tmp_path / "m").exists()


def test_cli_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line.split(": ")) == 2 for line in lines)
    pairs = {tuple(line.split(": ")) for line in lines}
    assert {name for kind, name in pairs if kind == "fusion"} == set(FUSIONS.names())
    assert {name for kind, name in pairs if kind == "adapter"} == set(ADAPTERS.names())
    assert len(FUSIONS) == 9 and len(ADAPTERS) == 7
    assert {"fusion", "adapter", "metric"} <= {kind for kind, _ in pairs}


def test_cli_init_model_saves_a_loadable_dir(tmp_path, capsys):
    from polyvis.models.build import load_model

    out = tmp_path / "init"
    rc = main(
        [
            "init-model",
            str(NANO_TINY),
            "--out",
            str(out),
            "--set",
            "model.adapter={type: pixel-shuffle}",
        ]
    )
    assert rc == 0 and "saved untrained model" in capsys.readouterr().out
    model, processor = load_model(out)
    assert model.config.adapter == {"type": "pixel-shuffle"}
    assert processor.image_seq_length == model.image_seq_length == 16  # 8x8 grid, factor 2
    assert load_config(out / "polyvis.yaml") == load_config(
        NANO_TINY, ["model.adapter={type: pixel-shuffle}"]
    )


@pytest.mark.parametrize(
    ("preset", "llm", "fusion"),
    [
        ("qwen2-0.5b-clip-dinov2.yaml", "Qwen/Qwen2-0.5B-Instruct", "omnifusion"),
        ("mistral-7b-omnifusion.yaml", "mistralai/Mistral-7B-Instruct-v0.2", "omnifusion"),
    ],
)
def test_real_checkpoint_presets_validate(preset, llm, fusion):
    cfg = load_config(ROOT / "configs" / preset)  # validation only: nothing is downloaded
    assert cfg.model.llm.path == llm and cfg.model.llm.config is None
    assert [e.path for e in cfg.model.encoders] == [
        "openai/clip-vit-large-patch14-336",
        "facebook/dinov2-large",
    ]
    assert cfg.model.encoders[0].layers == [-2]
    assert cfg.model.fusion["type"] == fusion
    assert cfg.model.adapter == {"type": "mlp", "depth": 2}
