"""QA of tiling (docs/tiling.md) where tests/test_tiling*.py do not look: a saved model whose
tiling was edited by hand is refused in one line naming the field; images of extreme aspect
ratio, tiny, large or in other modes tile and fill every placeholder; EXIF-rotated images get the
same token count from their header as from their pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiling_helpers import CLIP, NANO_TINY
from polyvis.config import load_config
from polyvis.data.dataset import ConversationDataset
from polyvis.data.records import make_record, write_records
from polyvis.errors import ConfigError
from polyvis.models.build import build_model, load_model, save_model
from polyvis.models.tiling import Tiling

# 1x3 against 2x1: a wide image and the same image turned by 90 degrees get different counts
TILED = CLIP + ", tiling: {grids: [[1, 3], [2, 1]], thumbnail: true}}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = load_config(
        NANO_TINY, [f"model.encoders=[{TILED}]", "model.fusion={type: concat-channel}"]
    )
    model, processor = build_model(cfg)
    return save_model(model, processor, tmp_path_factory.mktemp("tiled") / "model")


@pytest.fixture(scope="module")
def tiled(saved: Path):
    return load_model(saved)


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# -- saved tiling values -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tiling, field",
    [
        ({"grids": [], "thumbnail": True}, "grids"),  # was: max() arg is an empty sequence
        ({"grids": [[0, 2]], "thumbnail": True}, "grids"),  # was: loaded, then no image fitted
        ({"grids": [[1, 2, 3]], "thumbnail": True}, "grids"),  # was: too many values to unpack
        ({"grids": "1x2", "thumbnail": True}, "grids"),
        ({"thumbnail": True}, "grids"),  # was: KeyError 'grids'
        ({"grids": [[1, 2]], "thumbnail": "yes"}, "thumbnail"),
        ([[1, 2]], ""),
    ],
)
def test_a_hand_edited_tiling_in_config_json_is_one_line_naming_the_field(
    saved, tmp_path, tiling, field
):
    edited = shutil.copytree(saved, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["encoders"][0]["tiling"] = tiling
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        load_model(edited)
    msg = str(err.value)
    want = "encoders.clip.tiling" + (f".{field}" if field else "")
    assert msg.startswith(f"{want}: ") and "\n" not in msg, msg


def test_saved_tiling_round_trips_and_thumbnail_defaults_to_false(saved, tiled):
    model, processor = tiled
    assert model.tiling[1] == Tiling(((1, 3), (2, 1)), True)
    assert processor.tiling["grids"] == [[1, 3], [2, 1]] and processor.tiling["thumbnail"]
    assert Tiling.from_dict({"grids": [[2, 2]]}) == Tiling(((2, 2),), False)
    with pytest.raises(ConfigError, match=r"^tiling\.grids: "):
        Tiling.from_dict({"grids": [[True, 2]]})


# -- images --------------------------------------------------------------------------------------
def test_odd_images_tile_and_fill_every_placeholder(tiled):
    model, processor = tiled
    rgba = rgb(40, 60).convert("RGBA")
    images = [
        rgb(1, 1000),  # 1 px wide
        rgb(1000, 1),  # 1 px high
        rgb(1, 1),
        rgb(5, 3),  # smaller than a tile
        rgb(1500, 900),
        rgb(40, 60).convert("L"),
        rgba,
        rgb(40, 60).convert("P"),
        Image.fromarray(np.full((60, 40), 4000, dtype=np.uint16)),  # 16-bit grey
        rgb(40, 60).convert("CMYK"),
    ]
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nread it"}])
    enc = processor([text] * len(images), images=[[im] for im in images])
    counts = processor.image_token_counts(images)
    placeholders = (enc["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert placeholders == counts
    with torch.no_grad():
        out = model(**enc)
    assert torch.isfinite(out.logits).all()


def test_exif_rotated_images_count_their_tokens_from_the_header(tiled, tmp_path):
    model, processor = tiled
    wide = rgb(96, 32)  # 1x3 tiles (64 tokens); turned by 90 degrees, 2x1 (48)
    records = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for ext in ("jpg", "png"):
            wide.save(tmp_path / f"o{orientation}.{ext}", exif=exif.tobytes())
            records.append(
                make_record(f"{ext}{orientation}", f"o{orientation}.{ext}", [("q?", "a")])
            )
    files = write_records(tmp_path / "r.jsonl", records)
    image_id = model.config.image_token_id
    decoded = ConversationDataset(files, processor)
    header = ConversationDataset(files, processor, decode_images=False)
    for i in range(len(records)):
        a, b = decoded[i]["input_ids"], header[i]["input_ids"]
        assert torch.equal(a, b), records[i]["id"]
        turned = int(records[i]["id"][-1]) >= 5
        assert int((a == image_id).sum()) == (48 if turned else 64), records[i]["id"]
