"""Export to LLaVA for SigLIP and LoRA models, one BOS on the processor path (Llama-2 style
templates), and chat / eval on a run directory."""

from __future__ import annotations

import json
import shutil
import string

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlamaTokenizer, LlavaForConditionalGeneration

from polyvis.cli import main
from polyvis.config import load_config
from polyvis.data.template import encode_conversation, prompt_ids
from polyvis.errors import ConfigError
from polyvis.export.llava import build_llava, build_llava_processor, verify
from polyvis.models.build import build_model, load_model, save_model
from polyvis.serve.chat import answer

TINY = "configs/nano-tiny.yaml"
SIGLIP = (
    "model.encoders=[{name: siglip, config: {model_type: siglip_vision_model, hidden_size: 32, "
    "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, "
    "patch_size: 8}, layers: [-1]}]"
)
CLIP = (
    "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, "
    "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, "
    "patch_size: 8}, layers: [-1]}]"
)
IDENTITY = "model.fusion={type: concat-channel}"
# Llama-2 style: the template writes the BOS, and the tokenizer adds one too by default.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def _image(seed: int = 3) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(
        torch.randint(0, 256, (40, 30, 3), generator=g, dtype=torch.uint8).numpy()
    )


def test_siglip_with_its_pooling_head_exports_and_gives_polyvis_logits(tmp_path) -> None:
    torch.manual_seed(0)
    model, processor = build_model(load_config(TINY, [SIGLIP, IDENTITY]))
    assert model.config.encoders[0]["config"]["vision_use_head"]  # SigLIP's default
    src = save_model(model, processor, tmp_path / "model")
    assert main(["export-llava", str(src), "--out", str(tmp_path / "hf")]) == 0

    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert llava.config.vision_config.vision_use_head is False
    assert llava.config.vision_feature_select_strategy == "full"  # SigLIP has no class token
    ids = processor(["<image> hello there"], images=[_image()])
    with torch.no_grad():
        ours = model(**ids).logits
        theirs = llava(input_ids=ids["input_ids"], pixel_values=ids["pixel_values"][:, 0]).logits
    torch.testing.assert_close(theirs[..., : ours.shape[-1]], ours, atol=1e-5, rtol=1e-5)


def test_a_lora_run_is_told_to_merge_first(tmp_path, capsys) -> None:
    from polyvis.train.stages import LORA_DIR, apply_lora

    torch.manual_seed(0)
    model, processor = build_model(load_config(TINY, [CLIP, IDENTITY]))
    apply_lora(model, {"r": 2, "alpha": 4})
    with pytest.raises(ConfigError, match=r"^model\.llm: has a LoRA adapter.*polyvis merge-lora"):
        build_llava(model, processor)

    final = tmp_path / "run" / "final"  # laid out as training writes a LoRA run's final model
    model.language_model.save_pretrained(final / LORA_DIR)
    model.language_model = model.language_model.unload()
    save_model(model, processor, final)
    capsys.readouterr()
    rc = main(["export-llava", str(final), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(final) in err and f"polyvis merge-lora {final} --out" in err
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def llama_bos_model(tmp_path_factory) -> tuple:
    """A tiny model whose tokenizer is a Llama one that adds BOS, with a template writing it."""
    root = tmp_path_factory.mktemp("llama-bos")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for ch in string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.chat_template = LLAMA2_TEMPLATE
    tok.save_pretrained(root / "tokenizer")
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the premise: it adds BOS itself
    torch.manual_seed(0)
    cfg = load_config(TINY, [CLIP, IDENTITY, f"model.llm.tokenizer.path={root / 'tokenizer'}"])
    model, processor = build_model(cfg)
    return model, processor, save_model(model, processor, root / "model")


def test_the_processor_gives_one_bos_like_training(llama_bos_model) -> None:
    _, processor, _ = llama_bos_model
    bos = processor.tokenizer.bos_token_id
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}]
    text = processor.apply_chat_template(messages)
    assert text.startswith("<s>")
    ids = processor(text, images=_image())["input_ids"][0].tolist()
    assert ids == prompt_ids(processor, messages)  # what chat, eval and lmms-eval feed
    record = {
        "id": "r",
        "image": "x.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "red"},
        ],
    }
    trained = encode_conversation(record, processor)["input_ids"]
    assert trained[:2] == [bos, trained[1]] and trained[1] != bos  # training: one BOS
    assert ids[:2] == trained[:2] and ids.count(bos) == 1
    # Plain text gets no BOS unless asked for, as training adds none of the tokenizer's own
    batch = processor([text, "<image> hello"], images=[_image(), _image(4)])
    rows = [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert rows[0] == ids and bos not in rows[1]
    asked = processor("<image> hello", images=_image(4), add_special_tokens=True)["input_ids"]
    assert asked[0].tolist()[:1] == [bos] and asked[0].tolist()[1:] == rows[1]


def test_the_llava_export_of_a_bos_template_gives_one_bos(llama_bos_model, tmp_path) -> None:
    model, processor, src = llama_bos_model
    # verify() now calls both processors as users do (special tokens on)
    verify(model, processor, build_llava(model, processor), build_llava_processor(model, processor))
    assert main(["export-llava", str(src), "--out", str(tmp_path / "hf")]) == 0
    llava_proc = AutoProcessor.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    prompt = llava_proc.apply_chat_template(messages, add_generation_prompt=True)
    ids = llava_proc(text=prompt, images=_image(), return_tensors="pt")["input_ids"][0].tolist()
    ours = processor(processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat?"}]),
                     images=_image())["input_ids"][0].tolist()  # fmt: skip
    assert ids == ours and ids[0] == processor.tokenizer.bos_token_id and ids[1] != ids[0]


def _run_dir(model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "final")
    (run / "config.yaml").write_text("model: {}\n")
    return run


def test_chat_and_eval_take_a_run_directory(tiny_single_model_dir, tmp_path, capsys) -> None:
    run = _run_dir(tiny_single_model_dir, tmp_path)
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    rc = main(["chat", str(run), "--image", str(img), "what?", "--max-new-tokens", "4"])
    model, processor = load_model(tiny_single_model_dir)
    assert rc == 0
    assert (
        capsys.readouterr().out == answer(model, processor, img, "what?", max_new_tokens=4) + "\n"
    )

    rec = {"id": "a", "image": "red.png", "family": "scene",
           "conversations": [{"from": "human", "value": "<image>\nwhat?"},
                             {"from": "gpt", "value": "red"}]}  # fmt: skip
    (tmp_path / "val.jsonl").write_text(json.dumps(rec) + "\n")
    out = tmp_path / "eval"
    argv = ["eval", str(run), "--data", str(tmp_path / "val.jsonl"), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "2", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == "run" and results["model"] == str(run / "final")
    assert main(["export-llava", str(run), "--out", str(tmp_path / "hf")]) == 0  # and export
    assert (tmp_path / "hf" / "config.json").is_file()

    shutil.rmtree(run / "final")  # training not finished: say so, not "no config.json"
    capsys.readouterr()
    assert main(["chat", str(run), "--image", str(img), "what?"]) == 2
    err = capsys.readouterr().err
    assert "a run directory without a final/ model" in err and len(err.strip().splitlines()) == 1


def test_a_bos_adding_tokenizer_without_a_template_gets_one_bos_everywhere(tmp_path) -> None:
    """Mistral or Llama without a chat template: polyvis's plain template writes the BOS its LM
    was trained with, once, and training, the processor, the server's tokenisation and the
    LLaVA export (whose check compares ids) all see exactly that one."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for ch in string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
    LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True).save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    cfg = load_config(TINY, [CLIP, IDENTITY, f"model.llm.tokenizer.path={tmp_path / 'tok'}"])
    model, processor = build_model(cfg)
    bos = processor.tokenizer.bos_token_id
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}]
    text = processor.apply_chat_template(messages)
    assert text.startswith("<s>") and not text.startswith("<s><s>")
    ids = processor(text, images=_image())["input_ids"][0].tolist()
    assert ids == prompt_ids(processor, messages) and ids[0] == bos and ids.count(bos) == 1
    from polyvis.serve.batcher import Batcher, GenerationParams
    from polyvis.serve.jobs import Job

    job = Job(text, None, GenerationParams(max_tokens=2), lambda event: None)
    assert Batcher(model, processor)._prepare(job).ids == ids  # the server's tokenisation
    llava_processor = build_llava_processor(model, processor)
    verify(model, processor, build_llava(model, processor), llava_processor)
    assert llava_processor.tokenizer("hi")["input_ids"][0] != bos  # the template writes it
