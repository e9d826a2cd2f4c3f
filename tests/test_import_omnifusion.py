"""`polyvis import omnifusion`: files shaped like OmniFusion's give a polyvis model whose logits
equal a hand-built OmniFusion forward (README gen_answer: embeddings concatenated in its order)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    MistralConfig,
    MistralForCausalLM,
)

from polyvis.cli import main
from polyvis.export.omnifusion import BOT_TOKEN, DEFAULT_PROMPT, USER_TOKEN
from polyvis.models.build import load_model
from polyvis.models.tokenizer import train_bpe_tokenizer
from polyvis.serve.chat import chat_messages, prompt_ids


class VisualToGPTMapping(nn.Module):
    """OmniFusion's adapter, as in its models.py."""

    def __init__(self, visual_emb_dim: int, gpt_emb_dim: int, num_gpt_embs: int, num_heads: int):
        super().__init__()
        self.transformer_layer = nn.TransformerEncoderLayer(
            d_model=visual_emb_dim, nhead=num_heads, batch_first=True, norm_first=False
        )
        self.linear = nn.Linear(visual_emb_dim, gpt_emb_dim)
        self.n_embeddings = num_gpt_embs
        self.embedding_dim = gpt_emb_dim

    def forward(self, visual_embs: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.transformer_layer(visual_embs))
        return out.view(-1, self.n_embeddings, self.embedding_dim)


@pytest.fixture(scope="module")
def omni_src(tmp_path_factory):
    """A tiny OmniFusion checkpoint folder: same files, keys and shapes, small sizes."""
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("omnifusion") / "OmniMistral-v1_1"
    tok = train_bpe_tokenizer(None, 300)
    tok.save_pretrained(src / "tokenizer")
    lm_cfg = MistralConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    MistralForCausalLM(lm_cfg).save_pretrained(src / "tuned-model")
    clip_cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    CLIPVisionModel(clip_cfg).save_pretrained(src / "clip")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(src / "clip")
    projection = VisualToGPTMapping(32, 64, 16, 4).eval()
    torch.save(projection.state_dict(), src / "projection.pt")
    special = {
        k: torch.normal(torch.zeros(64), torch.ones(64) / 64**0.5)
        .to(torch.bfloat16)
        .requires_grad_()
        for k in ("USER", "BOT", "SOI", "EOI")
    }
    torch.save(special, src / "special_embeddings.pt")
    return src


@pytest.fixture(scope="module")
def imported(omni_src):
    out = omni_src.parent / "polyvis-omni"
    assert (
        main(["import", "omnifusion", str(omni_src), "--out", str(out), "--dtype", "float32"]) == 0
    )
    return out


def _reference_embeddings(src, image: Image.Image, question: str, lm) -> torch.Tensor:
    """OmniFusion's gen_answer, step by step, from the original files."""
    tok = AutoTokenizer.from_pretrained(src / "tokenizer")
    clip = CLIPVisionModel.from_pretrained(src / "clip").eval()
    proc = CLIPImageProcessor.from_pretrained(src / "clip")
    projection = VisualToGPTMapping(32, 64, 16, 4).eval()
    projection.load_state_dict(torch.load(src / "projection.pt", weights_only=True))
    special = torch.load(src / "special_embeddings.pt", weights_only=True)
    pixel_values = proc(image, return_tensors="pt")["pixel_values"]
    feats = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    vision = projection(feats)
    embed = lm.model.embed_tokens
    prompt_ids = tok.encode(DEFAULT_PROMPT, add_special_tokens=False, return_tensors="pt")
    question_ids = tok.encode(question, add_special_tokens=False, return_tensors="pt")
    return torch.cat(
        [
            embed(prompt_ids),
            special["SOI"].float()[None, None, ...],
            vision,
            special["EOI"].float()[None, None, ...],
            special["USER"].float()[None, None, ...],
            embed(question_ids),
            special["BOT"].float()[None, None, ...],
        ],
        dim=1,
    )


@torch.no_grad()
def test_imported_model_reproduces_omnifusion_logits_and_answers(omni_src, imported) -> None:
    model, processor = load_model(imported)
    assert model.config.adapter["type"] == "transformer" and model.image_seq_length == 16
    lm = AutoModelForCausalLM.from_pretrained(omni_src / "tuned-model").eval()
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(
        torch.randint(0, 256, (40, 50, 3), generator=g, dtype=torch.uint8).numpy()
    )
    question = "What is the sky color on this image?"

    ref_embeds = _reference_embeddings(omni_src, image, question, lm)
    ref = lm(inputs_embeds=ref_embeds).logits
    ids = torch.tensor([prompt_ids(processor, chat_messages(question))])
    pixel_values = processor.preprocess_images([image])
    ours = model(input_ids=ids, pixel_values=pixel_values).logits
    assert ours.shape[1] == ref.shape[1]
    vocab = ref.shape[-1]
    torch.testing.assert_close(ours[..., :vocab], ref, atol=1e-5, rtol=1e-5)

    # greedy answers agree too (the added USER / BOT rows are suppressed in generation)
    ref_new = lm.generate(inputs_embeds=ref_embeds, max_new_tokens=6, do_sample=False,
                          pad_token_id=lm.config.pad_token_id)  # fmt: skip
    out = model.generate(
        input_ids=ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False
    )
    assert out[0, ids.shape[1] :].tolist() == ref_new[0].tolist()


def test_chat_template_writes_omnifusion_turn_layout(imported) -> None:
    _, processor = load_model(imported)
    tok = processor.tokenizer
    user, bot = tok.convert_tokens_to_ids([USER_TOKEN, BOT_TOKEN])

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    ids = prompt_ids(processor, chat_messages("and now?", [("what is it?", "a dog")]))
    block = tok.convert_tokens_to_ids(["<img_start>"] + ["<image>"] * 16 + ["<img_end>"])
    want = enc(DEFAULT_PROMPT) + block + [user] + enc("what is it?") + [bot]
    want += enc("a dog") + [tok.eos_token_id] + [user] + enc("and now?") + [bot]
    assert ids == want
    # a system message replaces the default prompt; the raw <image> form renders the same layout
    text = processor.apply_chat_template(
        [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": "<image>\nhi"}]
    )
    assert text == f"Be brief.\n<image>{USER_TOKEN}hi{BOT_TOKEN}"


def test_pickled_projection_module_is_read_without_running_its_code(omni_src, tmp_path) -> None:
    # OmniFusion torch.save()s the whole module; its class lives in their models.py
    fake = types.ModuleType("models")
    cls = type("VisualToGPTMapping", (VisualToGPTMapping,), {"__module__": "models"})
    fake.VisualToGPTMapping = cls
    sys.modules["models"] = fake
    try:
        module = cls(32, 64, 16, 4)
        module.load_state_dict(torch.load(omni_src / "projection.pt", weights_only=True))
        torch.save(module, tmp_path / "projection_module.pt")
    finally:
        del sys.modules["models"]
    from polyvis.export.omnifusion import read_projection

    sd = read_projection(tmp_path / "projection_module.pt")
    ref = torch.load(omni_src / "projection.pt", weights_only=True)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_bad_inputs_are_one_line_errors(omni_src, tmp_path, capsys) -> None:
    torch.save(
        {"SOI": torch.zeros(64), "EOI": torch.zeros(64), "USER": torch.zeros(64)},
        tmp_path / "sp.pt",
    )
    argv = [
        "import",
        "omnifusion",
        str(omni_src),
        "--out",
        str(tmp_path / "o"),
        "--special",
        str(tmp_path / "sp.pt"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "sp.pt" in err and "'BOT'" in err and len(err.splitlines()) == 1

    torch.save({"linear.weight": torch.zeros(64, 32)}, tmp_path / "proj.pt")
    argv = [
        "import",
        "omnifusion",
        str(omni_src),
        "--out",
        str(tmp_path / "o"),
        "--projection",
        str(tmp_path / "proj.pt"),
    ]
    assert main(argv) == 2
    assert "proj.pt: not a VisualToGPTMapping state dict" in capsys.readouterr().err

    assert (
        main(["import", "omnifusion", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "nothing: OmniFusion checkpoint folder not found" in capsys.readouterr().err
