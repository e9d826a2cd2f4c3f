"""Adapters: shapes, gradients, batch independence, references, and config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyvis.errors import ConfigError
from polyvis.models.adapters import ADAPTERS, build_adapter
from polyvis.models.adapters.pixel_shuffle import pixel_shuffle

ALL = ["linear", "mlp", "transformer", "ldp", "cabstractor", "pixel-shuffle", "perceiver"]
GRID_ONLY = ["ldp", "cabstractor", "pixel-shuffle"]
IN_DIM, OUT_DIM, GRID = 48, 64, (8, 8)
EXPECTED_TOKENS = {
    "linear": 64,
    "mlp": 64,
    "transformer": 64,
    "ldp": 64,  # default 12x12 clamped to the 8x8 input
    "cabstractor": 64,  # default 8x8
    "pixel-shuffle": 16,  # 8x8 / 2^2
    "perceiver": 64,  # default num_latents
}


def make(name: str, grid: tuple[int, int] | None = GRID, tokens: int = 64, **opts):
    torch.manual_seed(0)
    return build_adapter({"type": name, **opts}, IN_DIM, OUT_DIM, grid, tokens)


def test_registry_holds_all_seven():
    assert set(ALL) <= set(ADAPTERS.names())


@pytest.mark.parametrize("name", ALL)
def test_shape_and_num_tokens(name):
    ad = make(name)
    y = ad(torch.randn(2, 64, IN_DIM))
    assert ad.num_tokens == EXPECTED_TOKENS[name]
    assert y.shape == (2, ad.num_tokens, OUT_DIM)


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name):
    ad = make(name)
    ad(torch.randn(2, 64, IN_DIM)).square().mean().backward()
    for pname, p in ad.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in ad.parameters())


@pytest.mark.parametrize("name", ALL)
def test_batch_independence(name):
    ad = make(name).eval()
    x = torch.randn(3, 64, IN_DIM)
    with torch.no_grad():
        together = ad(x)
        alone = torch.cat([ad(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", GRID_ONLY)
def test_grid_adapters_refuse_plain_sequences(name):
    with pytest.raises(ConfigError, match="plain sequence of 64 tokens") as err:
        make(name, grid=None)
    assert err.value.field == "model.adapter.type"
    assert str(err.value).startswith("model.adapter.type:")


@pytest.mark.parametrize("name", ["linear", "mlp", "transformer", "perceiver"])
def test_sequence_adapters_take_plain_sequences(name):
    ad = make(name, grid=None, tokens=10)
    y = ad(torch.randn(2, 10, IN_DIM))
    assert y.shape == (2, ad.num_tokens, OUT_DIM)
    assert ad.num_tokens == (64 if name == "perceiver" else 10)


# --- pixel-shuffle -------------------------------------------------------------------------


@pytest.mark.parametrize(("grid", "r"), [((4, 4), 2), ((4, 6), 2), ((6, 9), 3)])
def test_pixel_shuffle_matches_explicit_indexing(grid, r):
    h, w = grid
    d = 3
    x = torch.randn(2, h * w, d)
    ref = torch.empty(2, (h // r) * (w // r), d * r * r)
    for i in range(h // r):
        for j in range(w // r):
            for a in range(r):
                for b in range(r):
                    src = (i * r + a) * w + (j * r + b)
                    k = a * r + b
                    ref[:, i * (w // r) + j, k * d : (k + 1) * d] = x[:, src]
    assert torch.equal(pixel_shuffle(x, grid, r), ref)


def test_pixel_shuffle_adapter_is_shuffle_then_linear():
    ad = make("pixel-shuffle", factor=4)
    x = torch.randn(2, 64, IN_DIM)
    assert ad.num_tokens == 4
    torch.testing.assert_close(ad(x), pixel_shuffle(x, GRID, 4) @ ad.proj.weight.T)


def test_pixel_shuffle_indivisible_grid_names_factor():
    with pytest.raises(ConfigError, match="not divisible by factor 3") as err:
        make("pixel-shuffle", factor=3)
    assert err.value.field == "model.adapter.factor"


# --- mlp / LLaVA ---------------------------------------------------------------------------


def test_mlp_matches_transformers_llava_projector_exactly():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    cfg = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": IN_DIM},
        text_config={"model_type": "llama", "hidden_size": OUT_DIM},
        vision_feature_layer=-2,
    )
    proj = LlavaMultiModalProjector(cfg)
    ad = make("mlp")
    missing = proj.load_state_dict(ad.llava_state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 64, IN_DIM)
    with torch.no_grad():
        assert torch.equal(ad(x), proj(x))


def test_mlp_depth_and_llava_export_needs_depth_two():
    ad = make("mlp", depth=3)
    assert sum(isinstance(m, nn.Linear) for m in ad.mlp) == 3
    with pytest.raises(ConfigError) as err:
        ad.llava_state_dict()
    assert err.value.field == "model.adapter.depth"


def test_mlp_hidden_width_and_llava_export_needs_the_lm_width():
    ad = make("mlp", depth=3, hidden=96)
    shapes = [tuple(m.weight.shape) for m in ad.mlp if isinstance(m, nn.Linear)]
    assert shapes == [(96, IN_DIM), (96, 96), (OUT_DIM, 96)]
    assert ad(torch.randn(2, 64, IN_DIM)).shape == (2, 64, OUT_DIM)
    with pytest.raises(ConfigError) as err:
        make("mlp", hidden=96).llava_state_dict()
    assert err.value.field == "model.adapter.hidden" and "96" in str(err.value)
    assert make("mlp", hidden=OUT_DIM).llava_state_dict()["linear_1.weight"].shape == (64, 48)


# --- transformer / OmniFusion --------------------------------------------------------------


class OmniFusionMapping(nn.Module):
    """OmniFusion 1.0's VisualToGPTMapping as released (PyTorch defaults for the layer)."""

    def __init__(self, visual_emb_dim: int, gpt_emb_dim: int, num_heads: int):
        super().__init__()
        self.transformer_layer = nn.TransformerEncoderLayer(
            d_model=visual_emb_dim, nhead=num_heads, batch_first=True, norm_first=False
        )
        self.linear = nn.Linear(visual_emb_dim, gpt_emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.transformer_layer(x))


def test_transformer_loads_omnifusion_state_dict_key_for_key():
    torch.manual_seed(1)
    ref = OmniFusionMapping(IN_DIM, OUT_DIM, 4).eval()
    ad = make("transformer").eval()
    ad.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 64, IN_DIM)
    with torch.no_grad():
        torch.testing.assert_close(ad(x), ref(x))


def test_transformer_heads_must_divide_width():
    with pytest.raises(ConfigError, match="5 heads must divide the input width 48") as err:
        make("transformer", heads=5)
    assert err.value.field == "model.adapter.heads"


# --- ldp / cabstractor ---------------------------------------------------------------------


def test_ldp_pool_clamps_to_input_grid():
    assert make("ldp").pool_grid == (8, 8)
    assert make("ldp", pool_grid=4).pool_grid == (4, 4)
    assert make("ldp", pool_grid=[12, 3]).pool_grid == (8, 3)
    assert make("ldp", pool_grid=[12, 3]).num_tokens == 24


def test_ldp_matches_manual_pipeline():
    ad = make("ldp", pool_grid=4)
    x = torch.randn(2, 64, IN_DIM)
    h = ad.mlp(x).reshape(2, 8, 8, OUT_DIM)
    pooled = h.reshape(2, 4, 2, 4, 2, OUT_DIM).mean((2, 4))  # 2x2 block means
    m = pooled.permute(0, 3, 1, 2)
    expected = m + F.conv2d(m, ad.peg.weight, ad.peg.bias, padding=1, groups=OUT_DIM)
    expected = expected.flatten(2).transpose(1, 2)
    torch.testing.assert_close(ad(x), expected)


def test_cabstractor_pool_clamps_to_input_grid():
    ad = make("cabstractor", grid=(4, 4), tokens=16)
    assert ad.pool_grid == (4, 4) and ad.num_tokens == 16
    assert ad(torch.randn(1, 16, IN_DIM)).shape == (1, 16, OUT_DIM)
    assert make("cabstractor", pool_grid=2).num_tokens == 4


def test_cabstractor_options():
    ad = make("cabstractor", depth=2, hidden_dim=32, mlp_depth=1, pos_emb=False)
    assert ad.pos_emb is None
    assert [n for n, _ in ad.net[0].named_children()] == ["b1", "b2"]
    assert ad(torch.randn(2, 64, IN_DIM)).shape == (2, 64, OUT_DIM)
    # depth 0: pooling then the MLP only (Honeybee's no-ResNet variant)
    bare = make("cabstractor", depth=0, pool_grid=4, pos_emb=False)
    x = torch.randn(2, 64, IN_DIM)
    pooled = x.reshape(2, 4, 2, 4, 2, IN_DIM).mean((2, 4)).reshape(2, 16, IN_DIM)
    torch.testing.assert_close(bare(x), bare.readout(pooled))


# --- perceiver -----------------------------------------------------------------------------


def test_perceiver_ignores_token_order_without_pos_emb():
    ad = make("perceiver", num_latents=8, depth=1).eval()
    x = torch.randn(2, 64, IN_DIM)
    perm = torch.randperm(64)
    with torch.no_grad():
        torch.testing.assert_close(ad(x), ad(x[:, perm]), atol=1e-5, rtol=1e-5)
        pos = make("perceiver", num_latents=8, depth=1, pos_emb=True).eval()
        pos.pos_emb.data.normal_()
        assert not torch.allclose(pos(x), pos(x[:, perm]), atol=1e-4)
    assert ad.num_tokens == 8


def test_perceiver_heads_must_divide_width():
    with pytest.raises(ConfigError) as err:
        make("perceiver", heads=7)
    assert err.value.field == "model.adapter.heads"


# --- options via build_adapter -------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_names_the_field(name):
    with pytest.raises(ConfigError, match=f"adapter '{name}' takes no such option") as err:
        make(name, widht=3)
    assert err.value.field == "model.adapter.widht"
    listed = str(err.value).split("its options: ")[1].split(", ")
    params = [k for k in ADAPTERS.get(name).Params.model_fields if k != "type"]
    assert listed == (params or ["none"])


def test_bad_value_and_unknown_type_name_the_field():
    with pytest.raises(ConfigError) as err:
        make("mlp", depth=0)
    assert err.value.field == "model.adapter.depth"
    with pytest.raises(ConfigError, match="valid: cabstractor") as err:
        make("qformer")
    assert err.value.field == "model.adapter.type"
    with pytest.raises(ConfigError, match="greater than or equal to 1") as err:
        make("ldp", pool_grid=[0, 3])
    assert err.value.field == "model.adapter.pool_grid[0]"
    with pytest.raises(ConfigError, match="at most 2 items") as err:
        make("cabstractor", pool_grid=[2, 2, 2])
    assert err.value.field == "model.adapter.pool_grid"
