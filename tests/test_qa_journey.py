"""A practitioner's path on real-format checkpoints (tiny, random, saved with save_pretrained):
a language model directory without tokenizer files is refused in one line instead of training
with an empty tokenizer, `polyvis serve` takes a run directory as chat and eval do, and the chat
page draws a norm1000 model's boxes where they are (`polyvis serve --box-format norm1000`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers as T
from PIL import Image

from _box_helpers import chat_page_box_pixels
from _browser import browser_fixture, needs_browser, page_fixture  # noqa: F401
from polyvis.config import Config
from polyvis.errors import ConfigError
from polyvis.models.build import build_model

CLIP = {
    "name": "clip",
    "config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
}  # fmt: skip
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
QWEN = T.Qwen2Config(vocab_size=300, **SIZES)


def test_llm_path_without_tokenizer_files_is_one_line(tmp_path: Path):
    """transformers 5 loads an empty tokenizer (every text -> no ids) from a checkpoint directory
    that holds only config.json and weights; training on it learnt nothing, without a word."""
    lm_dir = tmp_path / "qwen2"
    T.Qwen2ForCausalLM(QWEN).save_pretrained(lm_dir)  # weights and config only
    cfg = Config.model_validate({"model": {"encoders": [CLIP], "llm": {"path": str(lm_dir)}}})
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    message = str(err.value)
    assert message.startswith("model.llm.path:") and "tokenizer" in message
    assert "\n" not in message


def test_serve_takes_a_run_directory_as_chat_and_eval_do(tmp_path: Path):
    """`polyvis serve runs/ft` was "runs/ft: not a polyvis model directory (no config.json)",
    where chat, eval and export-llava load the run's final/ model."""
    from polyvis.cli.serve import model_sources

    run = tmp_path / "runs" / "ft"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "final" / "config.json").write_text("{}")
    assert model_sources([str(run)]) == {"ft": run / "final"}
    assert model_sources([f"mine={run}"]) == {"mine": run / "final"}
    unfinished = tmp_path / "runs" / "half"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ConfigError, match="without a final/ model"):
        model_sources([str(unfinished)])


@needs_browser
@pytest.mark.timeout(120)
def test_web_page_draws_norm1000_boxes_by_the_image_size(tiny_single_model_dir, page, tmp_path):
    """The COCO and RefCOCO converters write norm1000 boxes by default; the page drew every box
    as pixels, so a norm1000 model's "[250, 167, 875, 458]" fell off a 64 x 48 image."""
    grey, magenta = [120, 120, 120], [255, 0, 255]
    image = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), tuple(grey)).save(image)
    points = [(16, 8), (56, 22), (36, 8), (16, 15), (36, 15), (15, 8)]
    pixels, _ = chat_page_box_pixels(
        page, tiny_single_model_dir, image, "[250, 167, 875, 458]", points, "norm1000"
    )
    # [250, 167, 875, 458] of 64 x 48 is pixels [16, 8, 56, 22]: edges magenta; inside, outside
    assert pixels == [magenta, magenta, magenta, magenta, grey, grey]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run laid out as training writes it: final/ with lora/ and polyvis.yaml."""
    import torch

    from polyvis.config import dump_config
    from polyvis.models.build import save_model
    from polyvis.train.stages import LORA_DIR, apply_lora

    torch.manual_seed(0)
    llm = {"config": {"model_type": "qwen2", **SIZES}, "tokenizer": {"vocab_size": 280}}
    cfg = Config.model_validate(
        {"model": {"encoders": [CLIP], "llm": llm, "fusion": {"type": "concat-channel"}}}
    )
    model, processor = build_model(cfg)
    apply_lora(model, {"r": 2, "alpha": 4})
    run = tmp_path_factory.mktemp("runs") / "lora"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    model.language_model.save_pretrained(run / "final" / LORA_DIR)
    model.language_model = model.language_model.unload()
    save_model(model, processor, run / "final")
    dump_config(cfg, run / "final" / "polyvis.yaml")
    return run


def test_merge_lora_takes_a_run_directory(lora_run: Path, tmp_path: Path, capsys):
    """`polyvis merge-lora runs/lora` said "runs/lora: no lora/ adapter to merge" of a LoRA run
    (its adapter is in final/lora), where chat, eval, serve and export-llava take the run."""
    from polyvis.cli import main
    from polyvis.models.build import load_model

    assert main(["merge-lora", str(lora_run), "--out", str(tmp_path / "merged")]) == 0
    load_model(tmp_path / "merged")
    assert not (tmp_path / "merged" / "lora").exists()
    capsys.readouterr()
    unfinished = tmp_path / "runs" / "half"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("model: {}\n")
    assert main(["merge-lora", str(unfinished), "--out", str(tmp_path / "m2")]) == 2
    assert "without a final/ model" in capsys.readouterr().err


def test_merged_model_keeps_its_model_section_for_init_from(lora_run: Path, tmp_path: Path):
    """The merged directory had no polyvis.yaml: a finetune from it (train.init_from) recorded
    the config's `model` section as it was written (fusion: add) over the model it trained
    (concat-channel), in config.yaml and its final/polyvis.yaml, without the warning a run's
    final/ gives."""
    from polyvis.cli import main
    from polyvis.train.run_dir import model_of_init

    assert main(["merge-lora", str(lora_run), "--out", str(tmp_path / "merged")]) == 0
    mine = Config.model_validate(
        {"model": {"encoders": [CLIP], "llm": {"config": {"model_type": "qwen2", **SIZES}},
                   "fusion": {"type": "add"}}}
    )  # fmt: skip
    cfg, differ = model_of_init(mine, tmp_path / "merged")
    assert cfg.model.fusion["type"] == "concat-channel" and "fusion" in differ


def test_chat_box_format_without_draw_boxes_is_refused(capsys):
    """`polyvis chat --box-format norm1000` without --draw-boxes did nothing, silently: the flag
    only says how --draw-boxes reads the answer, it does not ask the model for norm1000 boxes
    (as --temperature without --sample is refused)."""
    from polyvis.cli import main

    assert main(["chat", "no-model", "--box-format", "norm1000", "where is it?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--box-format" in err and "--draw-boxes" in err


def test_a_folder_given_as_records_file_is_named_a_folder(tmp_path: Path):
    """`polyvis eval --data data/coco` (the converter's --out folder) said "data/coco: records
    file not found" of a folder that is there; so did data.train in a training config."""
    from polyvis.data.records import read_records
    from polyvis.errors import DataError
    from polyvis.train.data import data_files

    folder = tmp_path / "coco"
    (folder / "sub").mkdir(parents=True)
    (folder / "val.jsonl").write_text("")
    with pytest.raises(DataError, match=r"coco: a folder, not a records file; .*coco/val\.jsonl"):
        read_records(folder)
    model = {"encoders": [CLIP], "llm": {"config": {"model_type": "qwen2", **SIZES}}}
    cfg = Config.model_validate({"model": model, "data": {"train": [str(folder / "sub")]}})
    with pytest.raises(ConfigError, match=r"^data\.train\[0\]: .*sub: a folder, not a records"):
        data_files(cfg, "train")
    with pytest.raises(DataError, match="records file not found"):
        read_records(folder / "nope.jsonl")
