"""FSDP and DeepSpeed through accelerate: the shipped configs, and FSDP runs on two CPU processes.

accelerate only shards on GPUs; polyvis shards a CPU launch with an FSDP config over gloo
(polyvis.train.sharding.shard_on_cpu), so the FSDP configs run here as they would on GPUs:
two processes give one process's losses, checkpoints keep the unsharded format both ways, and
the frozen-encoder, LoRA and feature-cache paths survive sharding. DeepSpeed is not installed
here: its configs are checked as accelerate reads them, without running.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from _launch import launch
from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.train import train
from polyvis.train.sharding import check_sharding, wrap_units

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"
ACCEL = ROOT / "configs" / "accelerate"
CONFIGS = [
    "cpu-ddp.yaml",
    "fsdp.yaml",
    "fsdp-lora.yaml",
    "deepspeed-zero2.yaml",
    "deepspeed-zero3.yaml",
]
LORA = ["train.stage=finetune", "train.lora={r: 4, alpha: 8}", "train.lr=1e-2"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(["scene", "ocr"], 24, 0, out, image_size=64, progress=False)
    return out


def sets(synth_dir: Path, *extra: str) -> list[str]:
    data = f"data.synthetic={{families: [scene, ocr], n: 24, seed: 0, size: 64, dir: {synth_dir}}}"
    return ["train.batch_size=4", "train.max_steps=6", "train.save_every=3", data, *extra]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=1e-4, msg=key)


def one_process(run: Path, synth_dir: Path, *extra: str) -> Path:
    train(load_config(CFG, sets(synth_dir, *extra)), run, progress=False)
    return run


def two_processes(config: str, run: Path, synth_dir: Path, *extra: str) -> None:
    command = ["-m", "polyvis", "train", str(CFG), "--out", str(run), "--no-progress"]
    launch(ACCEL / config, [*command, "--set", *sets(synth_dir, *extra)], run)
    done = json.loads((run / "done.json").read_text())
    assert (done["processes"], done.get("sharding")) == (2, "fsdp")  # sharded, not DDP


@pytest.fixture(scope="module")
def align_runs(synth_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The default stage (align: encoders and LLM frozen), on one process and FSDP on two."""
    root = tmp_path_factory.mktemp("align")
    one = one_process(root / "one", synth_dir)
    two_processes("fsdp.yaml", root / "fsdp", synth_dir)
    return one, root / "fsdp"


def test_fsdp_with_frozen_encoders_matches_one_process(align_runs):
    one, fsdp = align_runs
    assert json.loads((one / "done.json").read_text()).get("sharding") is None
    torch.testing.assert_close(
        torch.tensor(losses(fsdp)), torch.tensor(losses(one)), atol=1e-5, rtol=1e-5
    )
    assert_same_weights(weights(one), weights(fsdp))
    # the sharded checkpoint holds what an unsharded one holds, in the same layout
    a = load_file(str(one / "checkpoints" / "step-3" / "trainable.safetensors"))
    b = load_file(str(fsdp / "checkpoints" / "step-3" / "trainable.safetensors"))
    assert_same_weights(a, b)
    opt_a = torch.load(one / "checkpoints" / "step-3" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(fsdp / "checkpoints" / "step-3" / "optimizer.pt", weights_only=True)
    assert [g["params"] for g in opt_b["param_groups"]] == [
        g["params"] for g in opt_a["param_groups"]
    ]
    for i, state in opt_a["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(opt_b["state"][i][key], value, atol=1e-6, rtol=1e-5)


def _interrupted_copy(run: Path, to: Path) -> Path:
    """The run as a crash after its step-3 checkpoint leaves it: no final model, no done.json."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "final")
    (to / "done.json").unlink()
    return to


def test_resuming_a_sharded_run_gives_the_unsharded_weights(align_runs, synth_dir, tmp_path):
    one, fsdp = align_runs
    resumed = _interrupted_copy(fsdp, tmp_path / "resumed")
    two_processes("fsdp.yaml", resumed, synth_dir)
    assert_same_weights(weights(fsdp), weights(resumed), atol=0)  # as if never stopped
    assert_same_weights(weights(one), weights(resumed))
    # the checkpoint format is the unsharded one: one process resumes the FSDP run's checkpoint
    crossed = one_process(_interrupted_copy(fsdp, tmp_path / "crossed"), synth_dir)
    assert_same_weights(weights(one), weights(crossed))


def test_fsdp_lora_with_the_feature_cache_matches_one_process(synth_dir, tmp_path):
    extra = [*LORA, "train.cache_features=true"]
    one = one_process(tmp_path / "one", synth_dir, *extra)
    two_processes("fsdp-lora.yaml", tmp_path / "fsdp", synth_dir, *extra)
    fsdp = tmp_path / "fsdp"
    torch.testing.assert_close(
        torch.tensor(losses(fsdp)), torch.tensor(losses(one)), atol=1e-5, rtol=1e-5
    )
    assert_same_weights(weights(one), weights(fsdp))
    a = load_file(str(one / "final" / "lora" / "adapter_model.safetensors"))
    b = load_file(str(fsdp / "final" / "lora" / "adapter_model.safetensors"))
    assert_same_weights(a, b)


# -- the configs, as accelerate reads them (no launch) --------------------------------------------


def launch_env(name: str) -> tuple[Any, dict[str, str]]:
    """accelerate launch's view of a config file: its defaults and the processes' environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(ACCEL / name), "--num_processes", "2", "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return defaults, prepare_deepspeed_cmd_env(args)[1]
    return defaults, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_one_accelerate_knows(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(ACCEL / name))  # unknown top-level keys raise here
    known = vars(launch_command_parser().parse_args(["x.py"]))
    for section, prefix in (("fsdp_config", "fsdp_"), ("deepspeed_config", "")):
        for key in getattr(config, section):
            assert (key if key.startswith(prefix) else prefix + key) in known, f"{section}.{key}"


@pytest.mark.parametrize(
    ("name", "checkpointing"), [("fsdp.yaml", False), ("fsdp-lora.yaml", True)]
)
def test_fsdp_configs_give_a_full_shard_fsdp2_plugin(name, checkpointing, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    defaults, env = launch_env(name)
    assert str(defaults.distributed_type).endswith("FSDP") and env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert (plugin.fsdp_version, plugin.reshard_after_forward) == (2, True)
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.transformer_cls_names_to_wrap is None  # polyvis picks the blocks (below)
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # no CPU offload
    assert plugin.activation_checkpointing == checkpointing


@pytest.mark.parametrize(
    ("name", "stage"), [("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)]
)
def test_deepspeed_configs_give_the_zero_stage_without_deepspeed_installed(
    name, stage, monkeypatch
):
    from accelerate.utils import DeepSpeedPlugin

    defaults, env = launch_env(name)
    assert str(defaults.distributed_type).endswith("DEEPSPEED")
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (1, 1.0)
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)


def fake_accelerator(kind: str, ds_steps: int | str = "auto") -> SimpleNamespace:
    plugin = SimpleNamespace(
        transformer_cls_names_to_wrap=None,
        deepspeed_config={"gradient_accumulation_steps": ds_steps},
    )
    return SimpleNamespace(
        distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=plugin)
    )


def test_fsdp_units_are_the_blocks_of_the_llm_and_of_every_encoder(tiny_model_dir):
    from polyvis.models.build import load_model

    model, _ = load_model(tiny_model_dir)
    accelerator = fake_accelerator("FSDP")
    wrap_units(accelerator, model)
    names = accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap
    assert {"Qwen2DecoderLayer", "CLIPEncoderLayer", "Dinov2WithRegistersLayer"} <= set(names)
    assert set(names) <= {type(m).__name__ for m in model.modules()}  # only classes it has


def test_deepspeed_refuses_accumulation_and_checkpoints_naming_the_field():
    base = load_config(CFG).train
    check_sharding(fake_accelerator("DEEPSPEED"), base)  # the defaults pass
    check_sharding(fake_accelerator("FSDP"), base.model_copy(update={"grad_accum": 4}))
    with pytest.raises(ConfigError, match=r"^train\.grad_accum: must be 1 with DeepSpeed"):
        check_sharding(fake_accelerator("DEEPSPEED"), base.model_copy(update={"grad_accum": 2}))
    with pytest.raises(ConfigError, match=r"^train\.grad_accum: .*here 1 and 4"):
        check_sharding(fake_accelerator("DEEPSPEED", ds_steps=4), base)
    with pytest.raises(ConfigError, match=r"^train\.save_every: checkpoints are not supported"):
        check_sharding(fake_accelerator("DEEPSPEED"), base.model_copy(update={"save_every": 5}))
