"""Fusion methods: shapes, gradients, batch independence and each method's defining property."""

from __future__ import annotations

import pytest
import torch

from polyvis.errors import ConfigError
from polyvis.models.fusion import FUSIONS, EncoderInfo, build_fusion
from polyvis.models.fusion.base import align_tokens
from polyvis.models.fusion.common import align_all, concat_layers

NAMES = [
    "add",
    "mul",
    "concat-channel",
    "concat-sequence",
    "interleave",
    "omnifusion",
    "resampler",
    "sva",
    "gated",
]

E_A = EncoderInfo("a", dim=32, grid=(8, 8), num_layers=2)
E_B = EncoderInfo("b", dim=48, grid=(4, 4), num_layers=1)
E_C = EncoderInfo("c", dim=40, grid=(6, 4), num_layers=3)
SETS = {"k1": [E_A], "k2": [E_A, E_B], "k3": [E_A, E_B, E_C]}
# small option overrides that keep the attention methods quick
FAST = {"resampler": {"num_queries": 9, "depth": 1, "dim": 32}, "sva": {"dim": 32}}


def feats_for(encoders, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(b, e.num_tokens, e.dim, generator=g) for _ in range(e.num_layers)]
        for e in encoders
    ]


def make(name, encoders, **opts):
    torch.manual_seed(0)
    return build_fusion({"type": name, **FAST.get(name, {}), **opts}, encoders).eval()


def test_registry_holds_all_nine():
    assert set(NAMES) <= set(FUSIONS.names())


@pytest.mark.parametrize("k", list(SETS))
@pytest.mark.parametrize("name", NAMES)
def test_shape_grads_and_batch_independence(name, k):
    encoders = SETS[k]
    fusion = make(name, encoders)
    feats = feats_for(encoders, b=3)
    for layers in feats:
        for x in layers:
            x.requires_grad_(True)
    out = fusion(feats)
    assert out.shape == (3, fusion.num_tokens, fusion.out_dim)
    if fusion.grid is not None:
        assert fusion.grid[0] * fusion.grid[1] == fusion.num_tokens

    (out * torch.randn_like(out)).sum().backward()
    params = list(fusion.named_parameters())
    for pname, p in params:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    if not params:  # parameter-free (concat-channel without proj_dim): gradient reaches inputs
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for ls in feats for x in ls)

    with torch.no_grad():
        whole = fusion(feats)
        singles = torch.cat(
            [fusion([[x[i : i + 1] for x in ls] for ls in feats]) for i in range(3)]
        )
    torch.testing.assert_close(whole, singles, atol=1e-5, rtol=1e-4)


def test_concat_channel_single_encoder_is_identity():
    enc = [EncoderInfo("clip", dim=32, grid=(4, 4), num_layers=1)]
    fusion = make("concat-channel", enc)
    x = torch.randn(2, 16, 32)
    out = fusion([[x]])
    assert fusion.out_dim == 32 and fusion.grid == (4, 4)
    assert torch.equal(out, x)
    assert not list(fusion.parameters())


def test_concat_channel_widths_and_proj_dim():
    fusion = make("concat-channel", [E_A, E_B])
    assert (fusion.out_dim, fusion.grid) == (64 + 48, (8, 8))
    feats = feats_for([E_A, E_B])
    out = fusion(feats)
    torch.testing.assert_close(out[..., :32], feats[0][0])
    torch.testing.assert_close(out[..., 32:64], feats[0][1])
    fusion = make("concat-channel", [E_A, E_B], proj_dim=20)
    assert fusion.out_dim == 40 and fusion(feats).shape == (2, 64, 40)


def test_concat_channel_scales_each_encoder_and_checks_length():
    feats = feats_for([E_A, E_B])
    plain = make("concat-channel", [E_A, E_B])(feats)
    scaled = make("concat-channel", [E_A, E_B], scales=[0.5, 2.0])(feats)
    torch.testing.assert_close(scaled[..., :64], 0.5 * plain[..., :64])
    torch.testing.assert_close(scaled[..., 64:], 2.0 * plain[..., 64:])
    with pytest.raises(ConfigError, match=r"model\.fusion\.scales.*1 values for 2 encoders"):
        make("concat-channel", [E_A, E_B], scales=[1.0])
    with pytest.raises(ConfigError, match=r"scales"):
        make("concat-channel", [E_A, E_B], scales=[1.0, -1.0])


def test_add_fixed_weights_equals_hand_computation():
    fusion = make("add", [E_A, E_B], weights=[0.3, 0.7], learn_weights=False, dim=24)
    assert not any("weights" in n for n, _ in fusion.named_parameters())
    feats = feats_for([E_A, E_B])
    xa = torch.cat(feats[0], dim=-1)
    pb = fusion.proj[1](feats[1][0])  # 4x4 -> 8x8 after the projection
    pb = torch.nn.functional.interpolate(
        pb.transpose(1, 2).reshape(2, 24, 4, 4), size=(8, 8), mode="bilinear", align_corners=False
    )
    want = 0.3 * fusion.proj[0](xa) + 0.7 * pb.flatten(2).transpose(1, 2)
    torch.testing.assert_close(fusion(feats), want)


def test_add_weights_length_checked():
    with pytest.raises(ConfigError, match=r"model\.fusion\.weights"):
        make("add", [E_A, E_B], weights=[1.0])


def test_mul_is_scaled_product():
    fusion = make("mul", [E_A, E_B], align="pool")  # pool to the smallest grid, 4x4
    with torch.no_grad():
        fusion.scale.fill_(2.0)
    feats = feats_for([E_A, E_B])
    pa = fusion.proj[0](torch.cat(feats[0], -1)).transpose(1, 2).reshape(2, -1, 8, 8)
    pa = torch.nn.functional.adaptive_avg_pool2d(pa, (4, 4)).flatten(2).transpose(1, 2)
    want = 2.0 * pa * fusion.proj[1](feats[1][0])
    torch.testing.assert_close(fusion(feats), want)


def test_concat_sequence_appends_with_type_embedding():
    fusion = make("concat-sequence", [E_A, E_B], dim=16)
    assert fusion.num_tokens == 64 + 16 and fusion.grid is None
    feats = feats_for([E_A, E_B])
    out = fusion(feats)
    want_b = fusion.proj[1](feats[1][0]) + fusion.type_embed[1]
    torch.testing.assert_close(out[:, 64:], want_b)
    with pytest.raises(ConfigError, match=r"model\.fusion\.project"):
        make("concat-sequence", [E_A, E_B], project=False)
    same = [EncoderInfo("x", 16, (2, 2), 1), EncoderInfo("y", 16, (3, 3), 1)]
    fusion = make("concat-sequence", same, project=False, type_embedding=False)
    feats = feats_for(same)
    assert torch.equal(fusion(feats), torch.cat([feats[0][0], feats[1][0]], 1))


def test_interleave_order():
    encs = [EncoderInfo("x", 8, (2, 2), 1), EncoderInfo("y", 8, (2, 2), 1)]
    fusion = make("interleave", encs, dim=8)
    with torch.no_grad():
        for p in fusion.proj:
            p.weight.copy_(torch.eye(8))
            p.bias.zero_()
    x, y = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    out = fusion([[x], [y]])
    assert fusion.num_tokens == 8 and fusion.grid is None
    want = torch.stack([x[0, 0], y[0, 0], x[0, 1], y[0, 1], x[0, 2], y[0, 2], x[0, 3], y[0, 3]])
    assert torch.equal(out[0], want)


def test_omnifusion_layer_weights_and_zero_padding():
    fusion = make("omnifusion", [E_A, E_B])
    assert fusion.params.align == "pad" and fusion.num_tokens == 64 and fusion.out_dim == 48
    with torch.no_grad():
        fusion.layer_logits["0"].copy_(torch.tensor([0.5, -1.0]))
    w = fusion.layer_weights(0)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(w, torch.tensor([0.5, -1.0]).softmax(0))
    assert fusion.layer_weights(1).tolist() == [1.0]  # one layer: no weights to learn

    feats = feats_for([E_A, E_B])
    out = fusion(feats)
    # tokens 16.. come from encoder a alone: b's 16 tokens were zero-padded to 64
    ya = sum(wl * p(x) for wl, p, x in zip(w, fusion.layer_proj[0], feats[0]))
    torch.testing.assert_close(out[:, 16:], fusion.out(ya[:, 16:]))
    other = [feats[0], [torch.randn_like(feats[1][0])]]
    out2 = fusion(other)
    assert torch.equal(out2[:, 16:], out[:, 16:]) and not torch.allclose(out2[:, :16], out[:, :16])


def test_sva_locality():
    fusion = make("sva", [E_A, E_B])  # query grid 4x4: windows 2x2 on a, 1x1 on b
    assert fusion.grid == (4, 4) and fusion.windows == [(2, 2), (1, 1)]
    feats = feats_for([E_A, E_B], b=1)
    out = fusion(feats)
    changed = [[x.clone() for x in ls] for ls in feats]
    changed[0][0][0, 2 * 8 + 3] += 5.0  # encoder a, row 2 col 3 -> query (1, 1)
    changed[1][0][0, 3 * 4 + 0] += 5.0  # encoder b, row 3 col 0 -> query (3, 0)
    out2 = fusion(changed)
    moved = (out2 - out).abs().amax(-1)[0].reshape(4, 4) > 0
    expect = torch.zeros(4, 4, dtype=torch.bool)
    expect[1, 1] = expect[3, 0] = True
    assert torch.equal(moved, expect)


def test_sva_resizes_non_multiple_grids():
    fusion = make("sva", [E_B, E_C], grid=(4, 4))  # c is 6x4: resized to 8x4, windows 2x1
    assert fusion.windows == [(1, 1), (2, 1)]
    assert fusion(feats_for([E_B, E_C])).shape == (2, 16, 32)


def test_resampler_grid_and_heads_check():
    assert make("resampler", [E_A, E_B], num_queries=9).grid == (3, 3)
    assert make("resampler", [E_A, E_B], num_queries=10).grid is None
    with pytest.raises(ConfigError, match=r"model\.fusion\.heads"):
        make("resampler", [E_A], dim=30, heads=8)


def test_gated_gates_sum_to_one_and_start_as_mean():
    fusion = make("gated", [E_A, E_B, E_C])
    feats = feats_for([E_A, E_B, E_C])
    xs = align_all(concat_layers(feats, fusion.encoders), fusion.encoders, (8, 8), "interpolate")
    g = fusion.gates(xs)
    assert g.shape == (2, 64, 3)
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 64))
    torch.testing.assert_close(g, torch.full_like(g, 1 / 3))  # zero-initialised gate


def test_unknown_option_names_field():
    for name in NAMES:
        with pytest.raises(ConfigError, match=rf"model\.fusion\.bogus: fusion '{name}' takes no"):
            build_fusion({"type": name, "bogus": 1}, [E_A])


def test_unknown_type_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_fusion({"type": "nope"}, [E_A])
    msg = str(err.value)
    assert msg.startswith("model.fusion.type") and all(n in msg for n in NAMES)


def test_grid_policy_checks():
    with pytest.raises(ConfigError, match=r"model\.fusion\.grid: align: pool cannot grow"):
        make("add", [E_A, E_B], align="pool", grid=(8, 8))
    with pytest.raises(ConfigError, match=r"model\.fusion\.grid: align: pad would drop"):
        make("omnifusion", [E_A, E_B], grid=(4, 4))
    assert make("add", [E_A, E_B], align="pool").grid == (4, 4)
    assert make("gated", [E_A, E_B], grid=[6, 6]).num_tokens == 36


def test_wrong_inputs_name_the_encoder():
    fusion = make("add", [E_A, E_B])
    feats = feats_for([E_A, E_B])
    feats[1] = [torch.randn(2, 9, 48)]
    with pytest.raises(ValueError, match="encoder 'b'"):
        fusion(feats)


def test_align_tokens_policies():
    x = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 map holding 0..15
    pooled = align_tokens(x, (4, 4), (2, 2), "pool")
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    grown = align_tokens(x, (4, 4), (8, 8), "interpolate")
    assert grown.shape == (1, 64, 1)
    want = torch.nn.functional.interpolate(x.reshape(1, 1, 4, 4), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(grown.reshape(1, 1, 8, 8), want)
    padded = align_tokens(x, (4, 4), (5, 5), "pad")
    assert torch.equal(padded[:, :16], x) and torch.equal(padded[:, 16:], torch.zeros(1, 9, 1))
    assert torch.equal(align_tokens(x, (4, 4), (4, 4), "pool"), x)
    with pytest.raises(ValueError, match="cannot grow"):
        align_tokens(x, (4, 4), (8, 8), "pool")
    with pytest.raises(ValueError, match="unknown grid alignment"):
        align_tokens(x, (4, 4), (2, 2), "nearest")
