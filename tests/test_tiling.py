"""Tiling: the grid choice and the tiles are LLaVA-NeXT's, the token count follows the formula in
docs/tiling.md, the fusion rules (stitch / views / sequence) keep each view's meaning, untiled
models are untouched, and the config, export, dataset and feature cache handle tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LlavaNextImageProcessorPil
from transformers.image_processing_utils import select_best_resolution

from polyvis.config import load_config
from polyvis.data.collate import Collator, model_inputs
from polyvis.data.dataset import ConversationDataset
from polyvis.data.records import make_record, write_records
from polyvis.errors import ConfigError, DataError
from polyvis.export.llava import check_exportable
from polyvis.models.build import build_model, save_model
from polyvis.models.tiling import Tiling, cut, fuse_tiled, replicate, stitch
from polyvis.train.feature_cache import FeatureCache, encoder_fingerprint

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
CLIP = (
    "{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, intermediate_size: 64, "
    "num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, patch_size: 8}, layers: [-2]"
)
GRIDS = "[[1, 2], [2, 1], [2, 2]]"
DINO = (
    "{name: dino, config: {model_type: dinov2, hidden_size: 48, intermediate_size: 96, "
    "num_hidden_layers: 2, num_attention_heads: 2, image_size: 28, patch_size: 14}, layers: [-1]}"
)
SIZES = [(32, 96), (96, 32), (48, 48), (53, 37), (70, 100), (10, 300), (300, 10), (64, 64)]


def build(tiling: str | None, fusion: str = "{type: add}", with_dino: bool = True, seed: int = 0):
    clip = CLIP + (f", tiling: {tiling}}}" if tiling else "}")
    encoders = f"[{clip}, {DINO}]" if with_dino else f"[{clip}]"
    torch.manual_seed(seed)
    cfg = load_config(NANO_TINY, [f"model.encoders={encoders}", f"model.fusion={fusion}"])
    return build_model(cfg)


def image(size: tuple[int, int], seed: int) -> Image.Image:
    """A random image of (height, width)."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[0], size[1], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def tiled():
    return build(f"{{grids: {GRIDS}, thumbnail: true}}")


# -- the image side ------------------------------------------------------------------------------
def test_grid_choice_is_llava_next_select_best_resolution():
    tiling = Tiling(((1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (1, 1)), True)
    resolutions = [(r * 32, c * 24) for r, c in tiling.grids]
    for h in range(4, 200, 13):
        for w in range(4, 200, 17):
            r, c = tiling.select((h, w), (32, 24))
            assert (r * 32, c * 24) == select_best_resolution((h, w), resolutions), (h, w)


def test_views_are_llava_next_patches(tiled):
    _, processor = tiled
    clip = processor.image_processors["clip"]
    llava_next = LlavaNextImageProcessorPil(
        size={"height": 32, "width": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=False,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        image_mean=clip.image_mean,
        image_std=clip.image_std,
        resample=clip.resample,
    )
    images = [image(size, i) for i, size in enumerate(SIZES[:5])]
    pixels = processor.preprocess_images(images)
    assert pixels.shape == (5, processor.num_slots, 3, 32, 32) and processor.num_slots == 6
    tiling = Tiling(((1, 2), (2, 1), (2, 2)), True)
    for im, pv in zip(images, pixels):
        theirs = llava_next(images=[im], return_tensors="pt")["pixel_values"][0]
        slots = tiling.slots(processor.tile_grid((im.height, im.width)))
        assert torch.equal(pv[slots], theirs[: len(slots)])  # thumbnail, then tiles row by row
        unused = [s for s in range(5) if s not in slots]
        assert pv[unused].isnan().all() and not pv[slots].isnan().any()
        dino = processor.image_processors["dino"](images=[im], return_tensors="pt")
        assert torch.equal(pv[5, :, :28, :28], dino["pixel_values"][0])  # untiled: as before


@pytest.mark.parametrize("thumbnail", [True, False])
def test_token_count_formula(thumbnail):
    """docs/tiling.md: tokens = M x (thumbnail + rows x cols), (rows, cols) the chosen grid."""
    model, processor = build(f"{{grids: {GRIDS}, thumbnail: {str(thumbnail).lower()}}}")
    m = processor.image_seq_length
    assert m == model.image_seq_length == 16  # the add fusion on the 4x4 CLIP grid, mlp adapter
    tiling = Tiling(((1, 2), (2, 1), (2, 2)), thumbnail)
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nread it"}])
    for i, (h, w) in enumerate(SIZES):
        r, c = tiling.select((h, w), (32, 32))
        want = m * (int(thumbnail) + r * c)
        assert processor.image_token_count((h, w)) == want
        ids = processor(text, images=[image((h, w), i)])["input_ids"]
        assert int((ids == model.config.image_token_id).sum()) == want


def test_resampler_keeps_a_fixed_count_and_plain_expansion():
    _, processor = build(
        f"{{grids: {GRIDS}, thumbnail: true}}", "{type: resampler, num_queries: 4, heads: 2}"
    )
    assert not processor.tokens_vary
    assert {processor.image_token_count(s) for s in SIZES} == {4}
    assert processor.expand_image_tokens("<image>").count("<image>") == 4


def test_expanding_without_the_images_is_refused(tiled):
    _, processor = tiled
    with pytest.raises(DataError, match="'clip' tiles images.*pass the images"):
        processor.expand_image_tokens("<image>\nhi")
    view = processor.for_images([(32, 96), (48, 48)])
    assert view.expand_image_tokens("<image> a").count("<image>") == 48
    assert view.expand_image_tokens("b <image>").count("<image>") == 80
    with pytest.raises(DataError, match="different token counts"):
        _ = view.image_seq_length


# -- the fusion side -----------------------------------------------------------------------------
def test_stitch_cut_and_replicate():
    tiles = torch.arange(2 * 6 * 4 * 5, dtype=torch.float32).view(2, 6, 4, 5)  # 2x3 tiles of 2x2
    whole = stitch(tiles, (2, 2), (2, 3))
    grid = whole.view(2, 4, 6, 5)
    assert torch.equal(grid[:, 2:4, 4:6].reshape(2, 4, 5), tiles[:, 5])  # tile (1, 2)
    assert torch.equal(cut(whole, (2, 2), (2, 3)), tiles)
    x = torch.randn(1, 4, 3)  # a 2x2 map
    big = replicate(x, (2, 2), (2, 3)).view(1, 4, 6, 3)
    assert torch.equal(big[0, 0, :3], x[0, 0].expand(3, 3)) and torch.equal(big[0, 3, 5], x[0, 3])


def test_units_keep_each_view(tiled):
    """concat-channel over the tiled encoder alone is the identity: the units are the views; the
    thumbnail unit of a two-encoder add is the untiled fusion of (thumbnail, untiled encoder)."""
    model, processor = build(
        f"{{grids: {GRIDS}, thumbnail: true}}", "{type: concat-channel}", with_dino=False
    )
    images = [image((32, 96), 1), image((48, 48), 2)]
    with torch.no_grad():
        feats = model.encode_images(processor.preprocess_images(images))
        units = fuse_tiled(model.fusion, feats, 0, model.tiling[1])
    views = feats[0][0]  # (2, 5 slots, 16, 32)
    assert torch.equal(units, torch.cat([views[0, [0, 1, 2]], views[1]]))

    model, processor = tiled
    with torch.no_grad():
        feats = model.encode_images(processor.preprocess_images(images))
        units = fuse_tiled(model.fusion, feats, 0, model.tiling[1])
        thumbs = model.fusion([[feats[0][0][:, 0]], feats[1]])
    assert units.shape == (3 + 5, 16, model.fusion.out_dim)
    torch.testing.assert_close(units[[0, 3]], thumbs, rtol=0, atol=0)


def test_views_that_match_no_grid_are_refused(tiled):
    model, processor = tiled
    pixels = processor.preprocess_images([image((48, 48), 1)])
    pixels[0, 1] = float("nan")  # drop tile (0, 0) of a 2x2 grid
    with pytest.raises(DataError, match="match none of the grids"):
        model.get_image_features(pixels)


# -- untiled models, config, export --------------------------------------------------------------
def test_untiled_models_save_no_tiling(tmp_path):
    model, processor = build(None)
    assert model.tiling is None and processor.num_slots == 2 and not processor.tokens_vary
    out = save_model(model, processor, tmp_path / "m")
    assert all("tiling" not in e for e in json.loads((out / "config.json").read_text())["encoders"])
    assert "tiling" not in json.loads((out / "polyvis_processor.json").read_text())


def test_config_errors_name_the_field():
    tiled_clip = CLIP + f", tiling: {{grids: {GRIDS}}}}}"
    tiled_dino = DINO[:-1] + ", tiling: {grids: [[1, 2]]}}"
    with pytest.raises(ConfigError, match=r"^model\.encoders\[1\]\.tiling: only one encoder"):
        load_config(NANO_TINY, [f"model.encoders=[{tiled_clip}, {tiled_dino}]"])
    twice = CLIP + ", tiling: {grids: [[1, 2], [1, 2]]}}"
    with pytest.raises(ConfigError, match=r"^model\.encoders\[0\]\.tiling\.grids: .*repeat"):
        load_config(NANO_TINY, [f"model.encoders=[{twice}]"])


def test_export_is_refused_in_one_line():
    model, _ = build(f"{{grids: {GRIDS}, thumbnail: true}}", "{type: concat-channel}", False)
    with pytest.raises(ConfigError) as err:
        check_exportable(model.config)
    msg = str(err.value)
    assert msg.startswith("model.encoders[0].tiling: not exportable") and "LLaVA-NeXT" in msg
    assert "\n" not in msg


# -- dataset and feature cache -------------------------------------------------------------------
def _records(tmp_path: Path) -> Path:
    records = []
    for i, size in enumerate([(32, 96), (96, 32), (48, 48)]):
        image(size, i).save(tmp_path / f"{i}.png")
        records.append(make_record(f"r{i}", f"{i}.png", [("what is it?", f"thing {i}")]))
    return write_records(tmp_path / "train.jsonl", records)


def test_dataset_expands_each_image_with_its_own_count(tiled, tmp_path):
    model, processor = tiled
    files = _records(tmp_path)
    ds = ConversationDataset(files, processor)
    items = [ds[i] for i in range(len(ds))]
    counts = [int((x["input_ids"] == model.config.image_token_id).sum()) for x in items]
    assert counts == [48, 48, 80]
    assert ds.lengths() == [len(x["input_ids"]) for x in items]
    lazy = ConversationDataset(files, processor, decode_images=False)  # header sizes only
    assert all(torch.equal(lazy[i]["input_ids"], items[i]["input_ids"]) for i in range(3))
    batch = Collator(processor.tokenizer.pad_token_id)(items)
    assert batch["pixel_values"].shape == (3, 6, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(batch)).loss)


def test_feature_cache_is_keyed_by_tiling_and_gives_the_same_features(tiled, tmp_path):
    model, processor = tiled
    plain, plain_proc = build(None)  # same seed: the same encoder weights, no tiling
    assert encoder_fingerprint(model, processor, 0) != encoder_fingerprint(plain, plain_proc, 0)
    assert encoder_fingerprint(model, processor, 1) == encoder_fingerprint(plain, plain_proc, 1)
    files = _records(tmp_path)
    paths = sorted(tmp_path.glob("*.png"))
    cache = FeatureCache.for_model(model, processor, root=tmp_path / "features")
    assert cache.fill(model, processor, paths)["computed"] == 6
    ds = ConversationDataset(files, processor, decode_images=False)
    batch = Collator(processor.tokenizer.pad_token_id)([ds[i] for i in range(3)])
    cached = cache.lookup(batch["image_hashes"])
    with torch.no_grad():
        pixels = processor.preprocess_images([Image.open(p).convert("RGB") for p in paths])
        direct = model.encode_images(pixels)
        torch.testing.assert_close(cached[0][0], direct[0][0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(
            model.get_image_features(encoder_features=cached),
            model.get_image_features(pixels),
            rtol=0,
            atol=0,
        )


def test_training_with_the_feature_cache_has_the_same_losses(tmp_path, monkeypatch):
    from polyvis.data.synthetic import generate
    from polyvis.train import train

    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path / "cache"))
    synth = tmp_path / "synth"
    generate(["scene", "ocr"], 8, 0, synth, image_size=64, progress=False)
    clip = CLIP + f", tiling: {{grids: {GRIDS}, thumbnail: true}}}}"
    sets = [
        f"model.encoders=[{clip}, {DINO}]",
        "model.fusion={type: add}",
        "train.max_steps=3",
        "train.batch_size=2",
        f"data.synthetic={{families: [scene, ocr], n: 8, seed: 0, size: 64, dir: {synth}}}",
    ]

    def losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    train(load_config(NANO_TINY, sets), tmp_path / "plain", progress=False)
    train(
        load_config(NANO_TINY, [*sets, "train.cache_features=true"]),
        tmp_path / "cached",
        progress=False,
    )
    plain, cached = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert len(plain) == 3
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), atol=1e-5, rtol=1e-5)
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("meta.json")]
    tiling = {"grids": [[1, 2], [2, 1], [2, 2]], "thumbnail": True}
    assert {m["encoder"]: m.get("tiling") for m in metas} == {"clip": tiling, "dino": None}


def test_scoring_from_the_feature_cache_gives_a_tiled_model_the_same_answers(
    tiled, tmp_path, monkeypatch
):
    from polyvis.eval.runner import evaluate

    model, processor = tiled
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path / "cache"))
    files = _records(tmp_path)
    runs = [
        evaluate(
            model,
            processor,
            files,
            out_dir=tmp_path / f"o{i}",
            max_new_tokens=4,
            progress=False,
            feature_cache=cached,
        )  # fmt: skip
        for i, cached in enumerate([False, True, True])  # plain, filling, reading
    ]
    answers = [(tmp_path / f"o{i}" / "answers.jsonl").read_text() for i in range(3)]
    assert answers[0] == answers[1] == answers[2] and runs[2]["n"] == runs[0]["n"]
    stores = FeatureCache.for_model(model, processor).stores
    assert all(len(s) == 3 for s in stores)  # the three images, each with its views
