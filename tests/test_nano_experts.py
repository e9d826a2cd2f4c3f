"""The nano experts: vary-nano and clip-nano train end to end, load by path, and are cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polyvis.errors import ConfigError, DataError

TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "patch_size": 8}  # fmt: skip
TINY_DEC = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}  # fmt: skip
VARY = {"families": ["ocr", "table"], "encoder": TINY_VIT, "decoder": TINY_DEC, "steps": 16,
        "batch_size": 8, "lr": 3e-3, "max_target_len": 40, "eval_samples": 2, "threads": 2,
        "aux_families": ["ocr", "table"]}  # fmt: skip
CLIP = {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "patch_size": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "max_position_embeddings": 64},
        "projection_dim": 16, "vocab_size": 300, "steps": 16, "batch_size": 8, "lr": 3e-3,
        "eval_samples": 6, "qa_texts": 0.25, "threads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("nano-data")
    generate(["scene", "ocr", "table"], n=30, seed=0, out=out, image_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def vary(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from polyvis.nano.vary import train_vary

    out = tmp_path_factory.mktemp("vary") / "vary-nano"
    return out, train_vary([data_dir], out, VARY, progress=False)


@pytest.fixture(scope="module")
def clip(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from polyvis.nano.clip import train_clip

    out = tmp_path_factory.mktemp("clip") / "clip-nano"
    return out, train_clip([data_dir], out, CLIP, progress=False)


def _falls(curve: list[float | None]) -> bool:
    """The mean of the last 4 logged values is below the mean of the first 4."""
    values = [v for v in curve if v is not None]
    return sum(values[-4:]) / 4 < sum(values[:4]) / 4


def _polyvis_encoder(path: Path, layers: list[int]):
    """The expert as polyvis builds it from a config that lists it by path."""
    from tests.conftest import NANO_TINY

    from polyvis.config import load_config
    from polyvis.models.build import build_model

    cfg = load_config(NANO_TINY, [f"model.encoders=[{{name: e, path: '{path}', layers: {layers}}}]",
                                  "model.fusion={type: concat-channel}"])  # fmt: skip
    model, processor = build_model(cfg)
    return model.encoders[0], processor.image_processors["e"]


def test_vary_trains_and_saves_the_encoder_alone(vary: tuple[Path, dict], data_dir: Path) -> None:
    from transformers import AutoModel

    out, log = vary
    assert _falls(log["decode_loss_curve"]) and _falls(log["ctc_loss_curve"])
    assert log["train_samples"] == 24 + 24  # ocr read + table markdown, train split (80 %)
    assert set(log["eval"]) == {"ocr", "table"} and 0 <= log["eval"]["ocr"]["char_accuracy"] <= 1
    saved = json.loads((out / "training_log.json").read_text())
    assert saved["loss_curve"] == log["loss_curve"] and len(saved["loss_curve"]) == VARY["steps"]
    # Only the vision encoder is in the checkpoint: it reloads with no missing or extra weights.
    keys = set(load_file(out / "model.safetensors"))
    encoder, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trainer_only = ("decoder.", "proj.", "col_score.", "col_head.", "encoder.embeddings.")
    assert len(keys) == len(encoder.state_dict()) and not any(
        k.startswith(trainer_only) for k in keys
    )
    enc, proc = _polyvis_encoder(out, [-1])
    pv = proc(images=[torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()], return_tensors="pt")[
        "pixel_values"
    ]
    assert tuple(pv.shape[-2:]) == (64, 64) and torch.allclose(
        pv, torch.zeros_like(pv) - 1
    )  # mean/std 0.5
    pv = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = enc(pv)[0]
        ref = encoder(pixel_values=pv, output_hidden_states=True).hidden_states[-1][:, 1:]
    assert ours.shape == (2, 64, 32) and torch.allclose(ours, ref, atol=1e-5)


def test_vary_with_bpe_saves_its_decoder_as_a_starting_lm(
    vary: tuple[Path, dict], data_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import NANO_TINY

    from polyvis.config import load_config
    from polyvis.models.build import build_model
    from polyvis.nano.vary import train_vary

    out = tmp_path / "vary-bpe"
    settings = {**VARY, "steps": 4, "tokenizer": "bpe", "bpe_vocab_size": 300, "eval_samples": 0}
    train_vary([data_dir], out, settings, progress=False)
    assert not (vary[0] / "decoder").exists()  # the character vocabulary saves no decoder
    dec = out / "decoder"
    cfg = load_config(NANO_TINY, [
        f"model.encoders=[{{name: vary, path: '{out}', layers: [-1]}}]",
        "model.fusion={type: concat-channel}", f"model.llm={{path: '{dec}'}}",
    ])  # fmt: skip
    model, processor = build_model(cfg)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(dec)
    # The LM starts as the decoder: same weights for every token the decoder knew.
    ours = model.language_model.get_input_embeddings().weight
    theirs = saved.get_input_embeddings().weight
    assert torch.equal(ours[: theirs.shape[0]], theirs)
    layer = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(model.language_model.state_dict()[layer], saved.state_dict()[layer])
    assert processor.tokenizer("lamp")["input_ids"] == _token_ids(dec, "lamp")


def test_nano_lm_without_a_saved_decoder_names_the_setting(tmp_path: Path) -> None:
    from polyvis.nano.budget import BUDGET
    from polyvis.nano.world import nano_lm

    experts = {"vary-nano": tmp_path / "vary-nano-old"}
    with pytest.raises(ConfigError, match=r"vary-nano\.tokenizer.*decoder is missing"):
        nano_lm(experts, tmp_path / "corpus.txt", BUDGET, quick=False)
    scratch = nano_lm(experts, tmp_path / "corpus.txt", {**BUDGET, "lm": "scratch"}, quick=False)
    assert scratch["tokenizer"]["vocab_size"] == BUDGET["vocab"] and "path" not in scratch


def _token_ids(path: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)(text)["input_ids"]


def test_clip_trains_and_loads_its_vision_tower(clip: tuple[Path, dict]) -> None:
    from transformers import AutoTokenizer, CLIPModel

    out, log = clip
    assert _falls(log["loss_curve"])
    assert {"image_to_text_top1", "chance_top1"} <= set(log["eval"]["retrieval"])
    model = CLIPModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    # The end-of-text token has the largest id and ends every encoding, so CLIP's legacy argmax
    # pooling and its eos pooling pick the same position.
    assert model.config.text_config.eos_token_id == tok.eos_token_id == len(tok) - 1 != 2
    enc = tok(["a red circle in the centre", "two blue squares"], padding=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert [row[m.bool()][-1].item() for row, m in zip(ids, enc["attention_mask"])] == [
        len(tok) - 1
    ] * 2
    with torch.no_grad():
        text = model.text_model(**enc)
    at_argmax = text.last_hidden_state[torch.arange(2), ids.argmax(-1)]
    assert torch.allclose(text.pooler_output, at_argmax)
    # polyvis reads the penultimate layer of the vision tower, loaded by path.
    enc_, _ = _polyvis_encoder(out, [-2])
    pv = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = enc_(pv)[0]
        ref = model.vision_model(pixel_values=pv, output_hidden_states=True).hidden_states[-2][
            :, 1:
        ]
    assert ours.shape == (2, 64, 32) and torch.allclose(ours, ref, atol=1e-5)


def test_contrastive_loss_leaves_last_layer_patches_without_gradient(
    clip: tuple[Path, dict],
) -> None:
    """Why polyvis reads layer -2 of clip-nano: the last layer's patch tokens are never trained."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip[0])
    out = model.vision_model(pixel_values=torch.randn(2, 3, 64, 64), output_hidden_states=True)
    last, prev = out.hidden_states[-1], out.hidden_states[-2]
    g_last, g_prev = torch.autograd.grad(
        model.visual_projection(out.pooler_output).sum(), [last, prev]
    )
    assert g_last[:, 1:].abs().max() == 0 and g_prev[:, 1:].abs().max() > 0


def test_transcription_selection_and_vocabularies() -> None:
    from polyvis.nano.vary import is_transcription
    from polyvis.nano.vary_loss import ctc_target, table_cells
    from polyvis.nano.vary_tokenizer import BpeVocab, CharVocab

    def rec(q: str, task: str | None = None) -> dict:
        r = {
            "conversations": [
                {"from": "human", "value": f"<image>\n{q}"},
                {"from": "gpt", "value": "x"},
            ]
        }
        return {**r, "task": task} if task else r

    assert is_transcription(rec("Transcribe the table as markdown.", "markdown"), "table")
    assert not is_transcription(rec("What is the Age of fox?", "lookup"), "table")
    assert is_transcription(rec("Write the LaTeX for the formula."), "latex")  # converters: no task
    assert not is_transcription(rec("What does the red sign say?", "read"), "mixed")
    assert is_transcription(rec("Read the signs.", "transcribe"), "mixed")
    v = CharVocab(["ab\ncd", "| 1 |"])
    assert v.decode(v.encode("a|1\nd") + [v.eos_id, 5]) == "a|1\nd"
    assert v.encode("z") == [v.unk_id]
    book = CharVocab(["book"])
    assert ctc_target("book", (2, 5), True, book) == ("columns", book.encode("book"))  # + 1 repeat
    assert ctc_target("book", (2, 4), True, book) is None
    assert (
        ctc_target("a\nb", (8, 8), True, v) is None and ctc_target("ab", (8, 8), False, v) is None
    )
    # a markdown table is read in raster order: its cells, the rule line left out
    md = "| Item | Qty |\n| --- | --- |\n| oak | 7 |"
    assert table_cells(md) == "Item Qty oak 7" and table_cells("a\nb") is None
    cells = CharVocab([md])
    assert ctc_target(md, (4, 4), True, cells) == ("raster", cells.encode("Item Qty oak 7"))
    assert ctc_target(md, (3, 4), True, cells) is None  # 14 chars > 12 positions
    b = BpeVocab(["| Item | Size |\n| --- | --- |"] * 8, 300)
    assert b.decode(b.encode("| Size |\n| --- |") + [b.eos_id]) == "| Size |\n| --- |"


def test_raster_ctc_reads_every_patch_and_column_ctc_pools_rows() -> None:
    from polyvis.nano.vary import VarySettings
    from polyvis.nano.vary_loss import batch_loss
    from polyvis.nano.vary_model import build_vary

    torch.manual_seed(0)
    model, _ = build_vary(VarySettings(**{**VARY, "families": ["table"]}), 50, 20)
    pv, targets = torch.randn(2, 3, 64, 64), [[1, 5, 6, 2], [1, 7, 2]]
    for kind, pooled in (("raster", False), ("columns", True)):
        model.zero_grad()
        loss, dec, aux = batch_loss(model, pv, targets, [(kind, [3, 4, 5]), None], 1.0, 0)
        loss.backward()
        assert aux is not None and aux > 0 and loss.item() > dec
        # only the column CTC pools the rows with the learned per-column attention
        assert (model.col_score.weight.grad is not None) is pooled
        assert model.col_head[1].weight.grad.abs().sum() > 0
    loss, dec, aux = batch_loss(model, pv, targets, [None, None], 1.0, 0)
    assert aux is None and loss.item() == dec


def test_errors_name_the_field_or_folder(tmp_path: Path, data_dir: Path) -> None:
    from polyvis.nano.experts import ensure_experts
    from polyvis.nano.vary import train_vary

    with pytest.raises(ConfigError, match=r"^settings\.vary-nano\.stepz: unknown field"):
        ensure_experts(data_dir, {"vary-nano": {"stepz": 3}}, quick=True)
    with pytest.raises(ConfigError, match=r"^settings: unknown expert 'sam-nano'"):
        ensure_experts(data_dir, {"sam-nano": {}}, quick=True)
    with pytest.raises(DataError, match=str(tmp_path)):
        train_vary([tmp_path], tmp_path / "out", {"steps": 1})
    with pytest.raises(ConfigError, match=r"^encoder: give either init"):
        train_vary([data_dir], tmp_path / "out", {"init": str(tmp_path), "encoder": TINY_VIT})


def test_ensure_experts_builds_once_then_reuses(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polyvis.nano import experts

    paths = experts.ensure_experts(data_dir, quick=True, progress=False, parallel=False)
    assert set(paths) == {"clip-nano", "vary-nano"}
    stamps = {n: (p / "expert.json").stat().st_mtime_ns for n, p in paths.items()}
    for name, path in paths.items():
        assert path.parent.name == "experts" and path.name.startswith(f"{name}-")
        assert (path / "preprocessor_config.json").is_file() and (
            path / "model.safetensors"
        ).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("a cached expert was trained again")

    monkeypatch.setattr(experts, "build_expert", fail)
    assert experts.ensure_experts(data_dir, quick=True, progress=False) == paths
    assert {n: (p / "expert.json").stat().st_mtime_ns for n, p in paths.items()} == stamps
    # each expert was built in a temporary folder renamed into place: none is left over
    assert not [p.name for p in paths["clip-nano"].parent.iterdir() if p.name.startswith(".")]
    # Another setting is another expert (a new cache entry), and only that one is built.
    built = []
    monkeypatch.setattr(experts, "build_expert", lambda name, *a, **k: built.append(name))
    other = experts.ensure_experts(data_dir, {"vary-nano": {"seed": 1}}, quick=True, progress=False)
    assert built == ["vary-nano"] and other["clip-nano"] == paths["clip-nano"]
    assert other["vary-nano"] != paths["vary-nano"]


def test_parallel_workers_via_cli(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """`polyvis nano experts build` trains all four in worker processes; `list` shows them."""
    from polyvis.cli import main

    sets = [f"--set={n}-nano.steps=3" for n in ("clip", "vary", "dino", "lm")]
    assert (
        main(
            ["nano", "experts", "build", "--quick", "--data", str(data_dir), "--no-progress", *sets]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(f"{n}-nano: final loss" in out for n in ("clip", "vary", "dino", "lm"))
    paths = [Path(line.split("path: ")[1]) for line in out.splitlines() if "path: " in line]
    logs = [json.loads((p / "training_log.json").read_text()) for p in paths]
    assert sorted(len(x["loss_curve"]) for x in logs) == [3, 3, 3, 3]
    assert all(x["settings"]["threads"] == 1 for x in logs)
    assert main(["nano", "experts", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(str(p) in listed for p in paths)


def test_vary_train_cli_passes_its_options(data_dir: Path, tmp_path: Path) -> None:
    from polyvis.cli import main

    out = tmp_path / "vary-cli"
    argv = ["nano", "vary", "train", "--images-from", str(data_dir), "--families", "ocr,table",
            "--out", str(out), "--config", json.dumps(TINY_VIT), "--decoder", json.dumps(TINY_DEC),
            "--steps", "3", "--batch-size", "4", "--aux-families", "table, ",
            "--eval-samples", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert log["settings"]["aux_families"] == ["table"]
    assert log["settings"]["steps"] == 3 and len(log["loss_curve"]) == 3
    # only tables have CTC targets, so a logged CTC loss is the raster one
    assert any(v is not None for v in log["ctc_loss_curve"])


def test_same_settings_train_the_same_bytes(
    vary: tuple[Path, dict], data_dir: Path, tmp_path: Path
) -> None:
    """The shared loop fixes every random number: the experts cache relies on it."""
    from polyvis.nano.vary import train_vary

    log = train_vary([data_dir], tmp_path / "again", VARY, progress=False)
    assert log["loss_curve"] == vary[1]["loss_curve"]
    assert log["ctc_loss_curve"] == vary[1]["ctc_loss_curve"]
    again = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert again == (vary[0] / "model.safetensors").read_bytes()


def test_nano_command_group_replaces_the_old_commands(capsys: pytest.CaptureFixture) -> None:
    from polyvis.cli import build_parser, main
    from polyvis.cli.nano import _clip_train, _experts_build, _vary_train

    parser = build_parser()
    args = parser.parse_args(["nano", "clip", "train", "--images-from", "d", "--out", "o",
                              "--qa-texts", "0.5", "--steps", "7"])  # fmt: skip
    assert args.func is _clip_train and args.qa_texts == 0.5 and args.steps == 7
    args = parser.parse_args(["nano", "vary", "train", "--images-from", "d", "--out", "o",
                              "--aux-ctc", "0", "--tokenizer", "bpe"])  # fmt: skip
    assert args.func is _vary_train and args.aux_ctc == 0.0 and args.tokenizer == "bpe"
    args = parser.parse_args(["nano", "experts", "build", "--quick", "--set", "clip-nano.lr=1"])
    assert args.func is _experts_build and args.quick and args.set == ["clip-nano.lr=1"]
    assert main(["nano"]) == 1  # the group alone prints its help
    shown = capsys.readouterr().out
    assert all(group in shown for group in ("experts", "vary", "clip"))
    for old in ("vocab", "clip", "experts"):
        with pytest.raises(SystemExit):
            parser.parse_args([old, "--help"])
        assert f"invalid choice: '{old}'" in capsys.readouterr().err


def test_bf16_experts_are_their_own_cache_entries_learn_and_repeat(
    clip: tuple[Path, dict], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precision: bf16 autocasts the training steps (attention in fp32). It is part of the
    expert's key, fp32 (the default) hashes as before the setting existed, and a bf16 build is
    deterministic too."""
    from polyvis.nano import experts
    from polyvis.nano.clip import train_clip

    spec = experts.resolve_data(data_dir, "clip-nano", True)
    fp32 = experts.resolve_settings("clip-nano", None, True)
    bf16 = experts.resolve_settings("clip-nano", {"clip-nano": {"precision": "bf16"}}, True)
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    without = {k: v for k, v in fp32.items() if k != "precision"}
    assert experts.expert_key("clip-nano", fp32, spec) == experts.expert_key(
        "clip-nano", without, spec
    )
    assert experts.expert_key("clip-nano", bf16, spec) != experts.expert_key(
        "clip-nano", fp32, spec
    )

    monkeypatch.setattr(torch, "autocast", _recording_autocast(seen := []))
    logs = [train_clip([data_dir], tmp_path / f"bf16-{i}", {**CLIP, "precision": "bf16"},
                       progress=False) for i in range(2)]  # fmt: skip
    assert seen and all(args == ("cpu", torch.bfloat16, True) for args in seen)
    assert logs[0]["loss_curve"] == logs[1]["loss_curve"] and _falls(logs[0]["loss_curve"])
    assert logs[0]["loss_curve"] != clip[1]["loss_curve"]  # not the fp32 run
    first, again = (tmp_path / f"bf16-{i}" / "model.safetensors" for i in range(2))
    assert first.read_bytes() == again.read_bytes()
    config = json.loads((tmp_path / "bf16-0" / "config.json").read_text())
    assert "sdpa_fp32" not in json.dumps(config)  # the attention switch is not saved


def _recording_autocast(seen: list):
    real = torch.autocast

    def autocast(device_type, dtype=None, enabled=True, **kwargs):
        if enabled:
            seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    return autocast


def test_a_vary_decoder_config_without_model_type_names_the_field() -> None:
    from polyvis.nano.vary import VarySettings
    from polyvis.nano.vary_model import build_vary

    partial = {k: v for k, v in TINY_DEC.items() if k != "model_type"}
    with pytest.raises(ConfigError, match=r"^decoder: needs model_type \(a whole causal-LM"):
        build_vary(VarySettings(**{**VARY, "decoder": partial}), 50, 20)
