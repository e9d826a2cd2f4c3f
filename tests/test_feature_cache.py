"""Feature cache: same losses as without it, reuse without recompute, fingerprints, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from polyvis.cli import main
from polyvis.config import load_config
from polyvis.data.dataset import ConversationDataset
from polyvis.errors import ConfigError
from polyvis.models.build import build_model
from polyvis.models.encoders import VisionEncoder
from polyvis.train import train
from polyvis.train.feature_cache import FeatureCache, FeatureStore, encoder_fingerprint

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(["scene", "ocr"], 16, 0, out, image_size=64, progress=False)
    return out


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture()
def encoder_calls(monkeypatch) -> list[tuple[str, int, bool]]:
    """Every VisionEncoder call: (encoder name, images, grad enabled)."""
    calls: list[tuple[str, int, bool]] = []
    original = VisionEncoder.forward

    def counted(self, pixel_values):
        calls.append((self.name, int(pixel_values.shape[0]), torch.is_grad_enabled()))
        return original(self, pixel_values)

    monkeypatch.setattr(VisionEncoder, "forward", counted)
    return calls


def overrides(synth_dir: Path, *extra: str) -> list[str]:
    return [
        "train.max_steps=5",
        f"data.synthetic={{families: [scene, ocr], n: 16, seed: 0, size: 64, dir: {synth_dir}}}",
        *extra,
    ]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cached_training_has_the_same_losses(tmp_path, synth_dir, cache_dir, encoder_calls):
    train(load_config(CFG, overrides(synth_dir)), tmp_path / "plain", progress=False)
    assert encoder_calls and all(grad is False for _, _, grad in encoder_calls)  # frozen: no grad
    encoder_calls.clear()
    sets = overrides(synth_dir, "train.cache_features=true", "train.eval_every=5")
    train(load_config(CFG, sets), tmp_path / "cached", progress=False)
    cached, plain = losses(tmp_path / "cached"), losses(tmp_path / "plain")
    assert len(cached) == 5
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), atol=1e-5, rtol=1e-5)
    # The encoders ran only to fill the cache (no grad), each distinct image once per encoder.
    assert encoder_calls and all(grad is False for _, _, grad in encoder_calls)
    dirs = sorted(p for p in cache_dir.iterdir())
    assert len(dirs) == 2  # one fingerprint per encoder
    for d in dirs:
        index = json.loads((d / "index.json").read_text())["images"]
        assert index and (d / "shard-00000.safetensors").is_file()
        computed = sum(
            n
            for name, n, _ in encoder_calls
            if name == json.loads((d / "meta.json").read_text())["encoder"]
        )
        assert computed == len(index)  # each distinct image computed exactly once
    assert "val_loss" in json.loads(
        (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()[-1]
    )


def test_cli_fills_the_cache_and_training_reuses_it(
    tmp_path, synth_dir, cache_dir, encoder_calls, capsys
):
    sets = overrides(synth_dir, "train.stage=finetune")
    assert main(["cache-features", str(CFG), "--no-progress", "--set", *sets]) == 0
    first = capsys.readouterr().out
    assert "fingerprint" in first and "computed 0" not in first and encoder_calls
    encoder_calls.clear()
    train(load_config(CFG, [*sets, "train.cache_features=true"]), tmp_path / "run", progress=False)
    assert encoder_calls == []  # every feature came from the cache
    assert len(losses(tmp_path / "run")) == 5
    # A run started from that one (init_from) has the same encoders: the same cache.
    sets_next = [*sets, "train.cache_features=true", f"train.init_from={tmp_path / 'run'}"]
    train(load_config(CFG, sets_next), tmp_path / "next", progress=False)
    assert encoder_calls == [] and len(losses(tmp_path / "next")) == 5
    assert main(["cache-features", str(CFG), "--no-progress", "--set", *sets]) == 0
    assert "computed 0 encoder feature set(s)" in capsys.readouterr().out and encoder_calls == []


def test_a_checkpoint_encoder_shares_its_store_with_the_run_started_from_it(
    tmp_path, synth_dir, cache_dir, encoder_calls
):
    """An encoder loaded by `path:` (align run) and the same weights inside that run's model
    (the finetune run started from it) have one fingerprint: the features are computed once."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    ckpt = tmp_path / "clip-ckpt"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(ckpt)  # fmt: skip
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(ckpt)
    sets = overrides(synth_dir, "train.cache_features=true", "model.fusion={type: concat-channel}",
                     f"model.encoders=[{{name: clip, path: {ckpt}, layers: [-2]}}]")  # fmt: skip
    train(load_config(CFG, [*sets, "train.stage=align"]), tmp_path / "align", progress=False)
    assert encoder_calls and len(list(cache_dir.iterdir())) == 1
    encoder_calls.clear()
    started = [*sets, "train.stage=finetune", f"train.init_from={tmp_path / 'align'}"]
    train(load_config(CFG, started), tmp_path / "finetune", progress=False)
    assert encoder_calls == [] and len(list(cache_dir.iterdir())) == 1
    assert len(losses(tmp_path / "finetune")) == 5


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 30), color).save(path)
    return path


def test_fingerprint_changes_with_layers_size_weights_and_processor(tmp_path):
    def build(*sets: str):
        torch.manual_seed(0)
        return build_model(load_config(CFG, list(sets)))

    model, proc = build()
    base = [encoder_fingerprint(model, proc, k) for k in range(2)]
    assert [encoder_fingerprint(*build(), k) for k in range(2)] == base  # deterministic
    changed_layers = build("model.encoders.1.layers=[-1]")
    assert encoder_fingerprint(*changed_layers, 0) == base[0]  # the other encoder keeps its own
    assert encoder_fingerprint(*changed_layers, 1) != base[1]
    assert encoder_fingerprint(*build("model.encoders.0.image_size=32"), 0) != base[0]
    proc.image_processors["dino"].image_mean = [0.5, 0.5, 0.5]
    assert encoder_fingerprint(model, proc, 1) != base[1]
    with torch.no_grad():
        next(model.encoders[0].parameters()).view(-1)[0] += 1e-3
    assert encoder_fingerprint(model, proc, 0) != base[0]

    # A changed encoder misses the cache; the unchanged one keeps its features.
    model, proc = build()
    img = _png(tmp_path / "a.png", (200, 10, 10))
    cache = FeatureCache.for_model(model, proc, root=tmp_path / "features")
    assert cache.fill(model, proc, [img])["computed"] == 2
    other_model, other_proc = changed_layers
    other = FeatureCache.for_model(other_model, other_proc, root=tmp_path / "features")
    digest = next(iter(cache.covered()))
    assert cache.covers(digest) and not other.covers(digest) and digest in other.stores[0]
    assert other.fill(other_model, other_proc, [img])["computed"] == 1  # only the changed encoder


def test_store_round_trip_across_shards(tmp_path):
    store = FeatureStore(tmp_path / "fp", num_layers=2)
    feats = {f"h{i}": [torch.randn(5, 3), torch.randn(5, 3).to(torch.bfloat16)] for i in range(5)}
    for h, f in feats.items():
        store.put(h, f, shard_bytes=100)  # about one image per shard
    store.flush()
    assert len(list((tmp_path / "fp").glob("shard-*.safetensors"))) >= 3
    again = FeatureStore(tmp_path / "fp", num_layers=2)  # a fresh reader sees the index
    assert set(again.index) == set(feats)
    for h, f in feats.items():
        got = again.get(h)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
        assert all(torch.equal(a, b) for a, b in zip(got, f))
    cache = FeatureCache([again], ["fp"])
    out = cache.lookup(["h3", "h0", "h3"])
    assert len(out) == 1 and out[0][0].shape == (3, 5, 3)
    assert torch.equal(out[0][1][2], feats["h3"][1]) and torch.equal(out[0][0][1], feats["h0"][0])


def test_two_writers_of_one_store_keep_one_copy_of_each_image(tmp_path):
    """Two runs scored side by side compute the same val images; the second to flush writes only
    what the first did not (a demo's dino store had held 3.5 copies of every image)."""
    a, b = (FeatureStore(tmp_path / "fp", num_layers=1) for _ in range(2))
    feats = {h: [torch.randn(4, 2)] for h in ("h0", "h1", "h2")}
    a.put("h0", feats["h0"])
    a.put("h1", feats["h1"])
    b.put("h1", feats["h1"])
    b.put("h2", feats["h2"])
    a.flush()
    assert "h1" in b and torch.equal(b.get("h1")[0], feats["h1"][0])  # still queued in b
    b.flush()
    b.flush()  # nothing left: no empty shard
    shards = sorted((tmp_path / "fp").glob("shard-*.safetensors"))
    keys = [k for p in shards for k in list(safe_open(str(p), "pt").keys())]
    assert len(shards) == 2 and sorted(keys) == ["h0.0", "h1.0", "h2.0"]
    assert set(FeatureStore(tmp_path / "fp", num_layers=1).index) == {"h0", "h1", "h2"}


def test_cached_features_equal_the_encoders_and_unreadable_images_are_skipped(
    tmp_path, tiny_model_dir
):
    from polyvis.models.build import load_model

    model, proc = load_model(tiny_model_dir)
    _png(tmp_path / "good.png", (10, 200, 10))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    turns = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]
    records = [
        {"id": "g", "image": "good.png", "conversations": turns},
        {"id": "b", "image": "bad.png", "conversations": turns},
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    full = ConversationDataset(tmp_path / "r.jsonl", proc)
    light = ConversationDataset(tmp_path / "r.jsonl", proc, decode_images=False)
    assert (
        light[0]["image_hashes"] == full[0]["image_hashes"]
        and light[0]["pixel_values"].shape[0] == 0
    )
    cache = FeatureCache.for_model(model, proc, root=tmp_path / "features")
    stats = cache.fill(
        model, proc, [tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "gone.png"]
    )
    assert stats == {"images": 1, "computed": 2, "unreadable": 2}
    wrapped = cache.wrap(light)
    assert wrapped[0]["id"] == "g" and wrapped[1] is None  # bad.png hashes, but has no features
    with torch.no_grad():
        direct = model.encode_images(full[0]["pixel_values"])
    cached = cache.lookup(full[0]["image_hashes"])
    assert [len(x) for x in cached] == [len(x) for x in direct] == [1, 2]
    for a, b in zip(sum(cached, []), sum(direct, [])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_refuses_trained_encoders(tmp_path, synth_dir, cache_dir, capsys):
    sets = overrides(
        synth_dir,
        "train.stage=finetune",
        "train.unfreeze_encoders=true",
        "train.cache_features=true",
    )
    with pytest.raises(ConfigError, match=r"^train\.cache_features: needs frozen encoders"):
        train(load_config(CFG, sets), tmp_path / "run", progress=False)
    assert main(["cache-features", str(CFG), "--set", *sets]) == 2
    assert "train.cache_features: needs frozen encoders" in capsys.readouterr().err
    assert not cache_dir.exists()


def test_training_items_take_their_hashes_from_the_fill_and_read_no_image_again(
    tmp_path, tiny_model_dir, monkeypatch
):
    from polyvis.data import dataset as dataset_module
    from polyvis.models.build import load_model

    model, proc = load_model(tiny_model_dir)
    _png(tmp_path / "a.png", (10, 200, 10))
    _png(tmp_path / "b.png", (200, 10, 10))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    turns = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]
    records = [{"id": k, "image": f"{k}.png", "conversations": turns} for k in ("a", "b", "bad")]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    plain = ConversationDataset(tmp_path / "r.jsonl", proc, decode_images=False)
    paths = [p for i in range(len(plain)) for p in plain.image_paths(i)]
    cache = FeatureCache.for_model(model, proc, root=tmp_path / "features")
    cache.fill(model, proc, paths)
    assert set(cache.path_hashes) == set(paths[:2])  # bad.png gave no features: no hash kept
    known = ConversationDataset(
        tmp_path / "r.jsonl", proc, decode_images=False, image_hashes=cache.path_hashes
    )
    reads: list[Path] = []
    hash_file = dataset_module.image_hash
    monkeypatch.setattr(dataset_module, "image_hash", lambda p: reads.append(p) or hash_file(p))
    for i in range(3):
        a, b = plain[i], known[i]
        assert a["image_hashes"] == b["image_hashes"]
        assert torch.equal(a["input_ids"], b["input_ids"])
    # plain read all three files; known read only the one the fill could not use
    assert reads == [*paths, paths[2]]
    assert cache.wrap(known)[2] is None
