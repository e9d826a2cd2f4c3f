"""The whole model: every fusion x two adapters with two encoders of different grids and widths
(loss, backward, which roles get gradients per stage), and exact save / load round trips."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.models import answer_rows
from polyvis.models.build import build_model, load_model, save_model
from polyvis.models.fusion import FUSIONS
from polyvis.models.modeling import PolyVisForConditionalGeneration
from polyvis.models.processing import PolyVisProcessor

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"

# Small options that keep the attention-based methods quick.
FUSION_OPTS = {
    "resampler": {"num_queries": 16, "depth": 1, "heads": 4},
    "sva": {"heads": 4},
}
# The second adapter per fusion: one that needs the token grid when the fusion keeps one
# (nano-tiny: CLIP 8x8 x 64 wide, DINOv2-with-registers 4x4 x (2 layers x 48)), else a
# sequence adapter. Together with mlp this covers all seven adapters.
SECOND_ADAPTER = {
    "add": {"type": "ldp", "pool_grid": 4},
    "mul": {"type": "pixel-shuffle", "factor": 2},
    "concat-channel": {"type": "cabstractor", "pool_grid": 4, "hidden_dim": 32},
    "gated": {"type": "pixel-shuffle", "factor": 4},
    "omnifusion": {"type": "ldp", "pool_grid": 2},
    "sva": {"type": "pixel-shuffle", "factor": 2},
    "resampler": {"type": "cabstractor", "pool_grid": 2, "hidden_dim": 32},
    "concat-sequence": {"type": "perceiver", "num_latents": 8, "depth": 1},
    "interleave": {"type": "transformer", "heads": 4, "ffn_dim": 64},
}
CASES = [(f, {"type": "mlp", "depth": 2}) for f in sorted(SECOND_ADAPTER)]
CASES += [(f, a) for f, a in sorted(SECOND_ADAPTER.items())]
CASES += [("concat-sequence", {"type": "linear"})]


def image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(36, 44, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def base():
    """nano-tiny built once; the variants below share its encoders and LM."""
    torch.manual_seed(0)
    return build_model(load_config(NANO_TINY))


def variant(
    base, fusion: dict, adapter: dict
) -> tuple[PolyVisForConditionalGeneration, PolyVisProcessor]:
    model0, proc0 = base
    config = copy.deepcopy(model0.config)
    config.fusion, config.adapter = fusion, adapter
    torch.manual_seed(0)
    model = PolyVisForConditionalGeneration(
        config,
        language_model=model0.language_model,
        backbones=[e.backbone for e in model0.encoders],
    )
    proc = PolyVisProcessor(
        proc0.tokenizer, proc0.image_processors, proc0.image_sizes, model.image_seq_length
    )
    return model, proc


def training_batch(proc: PolyVisProcessor) -> dict:
    """Two samples; labels on the text tokens only (not padding, not image tokens)."""
    texts = [
        proc.apply_chat_template(
            [
                {"role": "user", "content": "<image>\nwhat is this?"},
                {"role": "assistant", "content": a},
            ],
            add_generation_prompt=False,
        )
        for a in ("a red circle", "two blue squares at the left")
    ]
    batch = dict(proc(texts, images=[image(1), image(2)], padding_side="right"))
    ids = batch["input_ids"]
    image_ids = proc.tokenizer.convert_tokens_to_ids(["<img_start>", "<image>", "<img_end>"])
    labels = ids.masked_fill(batch["attention_mask"] == 0, -100)
    labels = labels.masked_fill(torch.isin(ids, torch.tensor(image_ids)), -100)
    batch["labels"] = labels
    return batch


def step(model, batch) -> torch.Tensor:
    for p in model.parameters():  # the variants share modules: start from clean grads
        p.grad = None
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    return loss


def grads(params) -> list:
    return [p.grad for p in params]


def test_cases_cover_every_fusion_and_adapter():
    from polyvis.models.adapters import ADAPTERS

    assert {f for f, _ in CASES} == set(FUSIONS.names())
    assert len(FUSIONS) == 9
    assert {a["type"] for _, a in CASES} == set(ADAPTERS.names())


@pytest.mark.parametrize(
    ("fusion_type", "adapter"), CASES, ids=[f"{f}+{a['type']}" for f, a in CASES]
)
def test_loss_backward_and_stage_gradients(base, fusion_type, adapter):
    fusion = {"type": fusion_type, **FUSION_OPTS.get(fusion_type, {})}
    model, proc = variant(base, fusion, adapter)
    assert {tuple(e.grid) for e in model.encoders} == {(8, 8), (4, 4)}
    batch = training_batch(proc)
    groups = model.parameter_groups()

    # align stage: only fusion, adapter and the boundary embeddings learn
    model.set_trainable(encoders=False, projector=True, llm=False)
    step(model, batch)
    assert all(g is None for g in grads(groups["encoders"]))
    assert all(g is None for g in grads(groups["llm"]))
    named = dict(model.named_parameters())
    missing = [
        n for n, p in named.items() if n.startswith(("fusion.", "adapter.")) and p.grad is None
    ]
    assert not missing, f"projector parameters without gradient: {missing}"
    assert model.image_boundary_embeds.grad is not None
    assert bool(
        model.image_boundary_embeds.grad.abs().sum(1).gt(0).all()
    )  # both <img_start>, <img_end>
    assert all(bool(torch.isfinite(g).all()) for g in grads(groups["projector"]))

    # finetune stage: the LM learns too, the encoders stay frozen
    model.set_trainable(encoders=False, projector=True, llm=True)
    step(model, batch)
    assert all(g is None for g in grads(groups["encoders"]))
    assert all(g is not None for g in grads(groups["llm"]))
    assert all(g is not None for g in grads(groups["projector"]))


def test_unfrozen_encoders_get_gradients(base):
    model, proc = variant(base, {"type": "concat-channel"}, {"type": "mlp", "depth": 2})
    model.set_trainable(encoders=True, projector=True, llm=False)
    step(model, training_batch(proc))
    without = [n for n, p in model.encoders.named_parameters() if p.grad is None]
    # DINOv2's mask token only serves masked-image pretraining (bool_masked_pos); nothing else idles
    assert all(n.endswith("mask_token") for n in without), without
    assert all(g is None for g in grads(model.parameter_groups()["llm"]))


def test_loss_is_mean_cross_entropy_over_labelled_tokens(base):
    model, proc = variant(base, {"type": "concat-channel"}, {"type": "mlp", "depth": 2})
    batch = training_batch(proc)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    labels = batch["labels"]
    ref = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)


def test_answer_logits_only_gives_the_same_loss_and_gradients(base):
    model, proc = variant(base, {"type": "concat-channel"}, {"type": "mlp", "depth": 2})
    model.set_trainable(projector=True, llm=True)
    batch = training_batch(proc)
    n = int((batch["labels"][:, 1:] != -100).sum())
    full = step(model, {**batch, "num_items_in_batch": n})
    ref = [None if g is None else g.clone() for g in grads(model.parameters())]
    for p in model.parameters():
        p.grad = None
    out = model(**batch, num_items_in_batch=n, answer_logits_only=True)
    out.loss.backward()
    # Only the rows that predict a label were projected onto the vocabulary.
    assert out.logits.shape == (n, model.config.text_config.vocab_size)
    torch.testing.assert_close(out.loss, full, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads(model.parameters()), ref):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def answer_only_step(model, batch) -> tuple[torch.Tensor, torch.Tensor, list]:
    for p in model.parameters():
        p.grad = None
    out = model(**batch, num_items_in_batch=5, answer_logits_only=True)
    out.loss.backward()
    return out.loss.detach(), out.logits.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_layer_on_answer_rows_gives_the_full_forwards_logits(base, padding_side):
    model, proc = variant(base, {"type": "concat-channel"}, {"type": "mlp", "depth": 2})
    model.set_trainable(projector=True, llm=True)
    model.train()
    batch = training_batch(proc)
    if padding_side == "left":  # the same rows, padded on the left
        lengths = batch["attention_mask"].sum(1)
        for key, fill in (("input_ids", proc.tokenizer.pad_token_id), ("labels", -100)):
            rows = [
                torch.cat([t.new_full((len(t) - n,), fill), t[:n]])
                for t, n in zip(batch[key], lengths)
            ]
            batch[key] = torch.stack(rows)
        batch["attention_mask"] = batch["attention_mask"].flip(1)
    assert answer_rows.supported(model.language_model)
    assert answer_rows.right_padded(batch["attention_mask"]) == (padding_side == "right")
    model.answer_rows_forward = False
    loss, logits, ref = answer_only_step(model, batch)
    model.answer_rows_forward = True
    fast_loss, fast_logits, fast = answer_only_step(model, batch)
    torch.testing.assert_close(fast_logits, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_loss, loss, atol=1e-6, rtol=1e-6)
    for g, r in zip(fast, ref):
        assert (g is None) == (r is None)
        if g is not None:  # the weight gradients sum over fewer rows: equal up to rounding
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_answer_rows_with_a_row_without_answers_and_an_unknown_lm(base):
    model, proc = variant(base, {"type": "concat-channel"}, {"type": "mlp", "depth": 2})
    model.set_trainable(projector=True, llm=True)
    batch = training_batch(proc)
    batch["labels"][0] = -100  # the first row supervises nothing
    model.answer_rows_forward = False
    loss, logits, _ = answer_only_step(model, batch)
    model.answer_rows_forward = True
    fast_loss, fast_logits, _ = answer_only_step(model, batch)
    torch.testing.assert_close(fast_logits, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_loss, loss, atol=1e-6, rtol=1e-6)
    lm = model.language_model
    was = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"  # an attention it does not run: the LM's own path
    try:
        assert not answer_rows.supported(lm)
    finally:
        lm.config._attn_implementation = was


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_answer_logits_equal_the_lms_own_for_each_known_decoder(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    assert answer_rows.supported(lm)
    embeds = torch.randn(3, 12, 32)
    mask = (torch.arange(12)[None] < torch.tensor([[12], [7], [10]])).long()
    keep = torch.zeros(3, 12, dtype=torch.bool)
    keep[0, 8:11], keep[1, 4:6], keep[2, 9] = True, True, True
    ref = lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits
    torch.testing.assert_close(answer_rows.answer_logits(lm, embeds, mask, keep), ref)


def test_sequence_fusion_with_grid_adapter_is_a_config_error():
    cfg = load_config(
        NANO_TINY, ["model.fusion={type: interleave}", "model.adapter={type: pixel-shuffle}"]
    )
    with pytest.raises(
        ConfigError, match=r"^model\.adapter\.type: 'pixel-shuffle' needs a spatial grid"
    ):
        build_model(cfg)


ROUND_TRIPS = {
    "concat-channel+mlp": [],
    "sva+ldp": ["model.fusion={type: sva, heads: 4}", "model.adapter={type: ldp, pool_grid: 2}"],
    "resampler+perceiver": [
        "model.fusion={type: resampler, num_queries: 9, depth: 1, heads: 4}",
        "model.adapter={type: perceiver, num_latents: 4, depth: 1}",
    ],
    "interleave+transformer": [
        "model.fusion={type: interleave}",
        "model.adapter={type: transformer, ffn_dim: 64}",
    ],
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_save_load_round_trip_is_exact(tmp_path, name):
    torch.manual_seed(1)
    model, proc = build_model(load_config(NANO_TINY, ROUND_TRIPS[name]))
    out = save_model(model, proc, tmp_path / "m")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "model.safetensors").is_file()
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]

    loaded, proc2 = load_model(out)
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert [(e.layers, e.grid, e.num_prefix_tokens) for e in loaded.encoders] == [
        (e.layers, e.grid, e.num_prefix_tokens) for e in model.encoders
    ]

    text = proc.apply_chat_template([{"role": "user", "content": "<image>\nwhat is here?"}])
    inputs, inputs2 = proc(text, images=[image(3)]), proc2(text, images=[image(3)])
    assert inputs.keys() == inputs2.keys()
    assert all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs2).logits)
