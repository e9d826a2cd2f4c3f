"""Linear probes on frozen features: the labels, the ridge probe, and the table with its controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("probe-data")
    generate(["scene", "mixed"], n=40, seed=0, out=out, image_size=64, progress=False)
    return out


def _save_expert(out: Path, config: dict, log: dict | None) -> Path:
    """A random tiny backbone saved the way the experts are: weights + image processor."""
    from transformers import AutoConfig, AutoModel, ViTImageProcessor

    cfg = dict(config)
    torch.manual_seed(5)
    AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    if log is not None:
        (out / "training_log.json").write_text(json.dumps(log))
    return out


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe-experts")
    vit = {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 2,
           "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 8, "image_size": 32}  # fmt: skip
    resnet = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16],
              "depths": [1, 1], "layer_type": "basic"}  # fmt: skip
    return {
        "vit": _save_expert(root / "vit", vit, {"read_layers": [-3, -1]}),
        "cnn": _save_expert(root / "cnn", resnet, None),
    }


def _coco(images: list[list[tuple[str, str, list[int]]]]) -> dict:
    """A scene annotation file: per image, its (shape, colour, bbox) objects."""
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    ids = {c["name"]: c["id"] for c in cats}
    anns = [{"image_id": i, "category_id": ids[s], "bbox": b, "attributes": {"color": c}}
            for i, objs in enumerate(images) for s, c, b in objs]  # fmt: skip
    ims = [{"id": i, "file_name": f"{i:06d}.png", "width": 60, "height": 60}
           for i in range(len(images))]  # fmt: skip
    return {"images": ims, "annotations": anns, "categories": cats}


def test_scene_labels_are_read_from_the_annotations(tmp_path: Path) -> None:
    from polyvis.nano.probe_data import scene_probes

    train = [
        [("circle", "red", [40, 0, 10, 10]), ("square", "blue", [0, 40, 16, 16])],
        [("triangle", "red", [0, 0, 12, 12]), ("circle", "red", [30, 30, 8, 8])],
        [("square", "green", [20, 20, 14, 14])],
    ]
    val = [[("circle", "green", [45, 45, 10, 10]), ("triangle", "blue", [2, 20, 18, 18])]]
    (tmp_path / "annotations").mkdir()
    for split, imgs in (("train", train), ("val", val)):
        (tmp_path / "annotations" / f"{split}.json").write_text(json.dumps(_coco(imgs)))
    ps = scene_probes(tmp_path)
    assert ps.n_train == 3 and ps.images[3] == tmp_path / "images" / "val" / "000000.png"
    got = {t.name: (t.train_labels, t.val_labels) for t in ps.tasks}
    # largest shape: blue square, red triangle, green square | blue triangle
    assert got["colour"] == (["blue", "red", "green"], ["blue"])
    assert got["shape"] == (["square", "triangle", "square"], ["triangle"])
    assert got["count"] == (["2", "2", "1"], ["2"])
    # leftmost needs two shapes: image 2 has one
    assert got["leftmost colour"] == (["blue", "red"], ["blue"])
    # the one red shape of image 0 (two reds in image 1); the one blue in image 0 and in val
    assert got["cell of the X object:blue"] == (["r2c0"], ["r1c0"])
    assert "cell of the X object:red" not in got  # no val image has exactly one red shape
    # largest sides 16, 12, 14: thirds at 14 and 16
    assert got["size"] == (["large", "small", "medium"], ["large"])


def test_ridge_probe_is_primal_ridge_in_both_forms_and_majority_is_exact() -> None:
    from polyvis.nano.probe_fit import LAMBDAS, Task, _Fit, majority, score_tasks, standardise

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 20) + 1
    rule = torch.randn(20, 3, generator=g, dtype=torch.float64)
    labels = [str(i) for i in (x @ rule).argmax(1).tolist()]
    z = standardise(x, 250)
    # reference: primal ridge with an unpenalised intercept, written out
    zt = z[:250].double()
    y = torch.nn.functional.one_hot(torch.tensor([int(v) for v in labels[:250]])).double()
    zc = zt - zt.mean(0)
    lam = 0.1 * (zc**2).sum(1).mean()
    w = torch.linalg.solve(zc.T @ zc + lam * torch.eye(20), zc.T @ (y - y.mean(0)))
    ref = [str(i) for i in ((z[250:].double() - zt.mean(0)) @ w + y.mean(0)).argmax(1).tolist()]
    rows, val = list(range(250)), list(range(250, 300))
    primal = _Fit(z, rows, val, None).predict(labels[:250], 0.1)
    dual = _Fit(z, rows, val, (z @ z.T).double()).predict(labels[:250], 0.1)
    assert primal == ref and dual == ref
    # two classes split by a plane: the probe finds it (chance 25 of 50)
    score = x @ torch.randn(20, generator=g, dtype=torch.float64)
    sign = [str(int(v)) for v in (score > score[:250].median()).tolist()]
    found = score_tasks(z, [Task("plane", rows, sign[:250], val, sign[250:])])["plane"]
    assert found.n == 50 and found.correct >= 42 and found.lam in LAMBDAS
    noise = Task("noise", [0, 1, 2, 3], ["a", "b", "b", "c"], [4, 5, 6], ["b", "a", "b"])
    assert (majority(noise).correct, majority(noise).n) == (2, 3)


def test_run_probes_gives_a_table_with_controls(data_dir: Path, experts: dict[str, Path]) -> None:
    from polyvis.nano.probes import run_probes

    table = run_probes(experts, data_dir, layers={"cnn": [-1]})
    assert table.rows == ["vit L0", "vit L2", "vit random-init L0", "vit random-init L2",
                          "cnn L2", "cnn random-init L2", "raw pixels"]  # fmt: skip
    assert table.probes[:3] == ["colour", "shape", "count"]
    assert {"leftmost colour", "cell of the X object", "sign word", "sign letter"} <= set(
        table.probes
    )
    for row in table.rows:
        for pooling in ("pooled", "grid"):
            for probe in table.probes:
                acc = table.accuracy(row, pooling, probe)
                assert acc is not None and 0 <= acc <= 1
                assert table.scores[row][pooling][probe][1] == table.chance[probe][1]
    md = table.markdown().splitlines()
    assert md[0] == "| source | " + " | ".join(table.probes) + " |"
    assert md[2].startswith("| vit L0 | ") and md[len(table.rows) + 2].startswith("| majority")
    # deterministic: the same twins, the same probes, the same numbers
    again = run_probes({"vit": experts["vit"]}, data_dir, raw_pixels=False)
    assert again.scores["vit random-init L2"] == table.scores["vit random-init L2"]
    assert again.scores["vit L0"] == table.scores["vit L0"]


def test_random_twin_is_the_same_architecture_freshly_seeded(experts: dict[str, Path]) -> None:
    from polyvis.nano.probes import expert_encoders

    trained, twin, proc = expert_encoders(experts["vit"], [-1], seed=0)
    _, twin2, _ = expert_encoders(experts["vit"], [-1], seed=0)
    a, b, c = (dict(e.backbone.named_parameters()) for e in (trained, twin, twin2))
    assert a.keys() == b.keys()
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert not torch.equal(a["embeddings.patch_embeddings.projection.weight"],
                           b["embeddings.patch_embeddings.projection.weight"])  # fmt: skip
    assert proc.size == {"height": 32, "width": 32} and twin.grid == trained.grid == (4, 4)


def test_grids_are_pooled_to_a_common_8x8_and_features_carry_no_graph(
    experts: dict[str, Path],
) -> None:
    from polyvis.nano.probes import encoder_features, expert_encoders, on_grid

    tokens = torch.arange(2 * 256 * 3, dtype=torch.float32).reshape(2, 256, 3)
    pooled = on_grid(tokens, (16, 16), 8).reshape(2, 64, 3)
    grid = tokens.reshape(2, 16, 16, 3)
    # cell (row 1, col 2) of the 8 x 8 grid averages rows 2-3, columns 4-5 of the 16 x 16 one
    assert torch.equal(pooled[:, 1 * 8 + 2], grid[:, 2:4, 4:6].mean((1, 2)))
    assert torch.equal(on_grid(tokens, (16, 16), None), tokens.flatten(1))
    trained, _, _ = expert_encoders(experts["vit"], [-1], seed=0)
    feats = encoder_features(trained, torch.randn(3, 3, 32, 32), grid_side=8)[0]
    assert feats["grid"].shape == (3, 4 * 4 * 16)  # a 4 x 4 grid is coarser than 8: kept
    assert not feats["grid"].requires_grad and not feats["pooled"].requires_grad


def test_module_command_prints_the_table_and_writes_json(
    data_dir: Path, experts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from polyvis.nano.probes import main

    out = tmp_path / "probes.json"
    args = ["--expert", f"vit={experts['vit']}:-1", "--data", str(data_dir), "--no-pixels",
            "--max-train", "20", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    saved = json.loads(out.read_text())
    assert saved["rows"] == ["vit L2", "vit random-init L2"]
    printed = capsys.readouterr().out
    assert "| vit random-init L2 | " in printed and "| majority class | " in printed
