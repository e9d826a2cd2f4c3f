"""Bad input a user sends by accident: records files and image paths for `polyvis train` / `eval`,
and request bodies and images for `polyvis serve`. Each gets one line naming the file, line,
record or field; the server answers the next request."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import httpx
import pytest

from _serve_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    AUTH,
    data_uri,
    image_dir_fixture,
    noise,
    server_fixture,
    sharp_model_dir_fixture,
    user,
)
from polyvis.cli import main
from polyvis.data.dataset import header_size
from polyvis.data.images import ImageError, image_hash, load_image
from polyvis.data.records import make_record, read_records, validate_record, write_records
from polyvis.errors import DataError

NANO_TINY = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"


def _records(n: int) -> list[dict]:
    return [make_record(f"rec-{i}", None, [("Say it.", str(i))]) for i in range(n)]


def _eval_error(tmp_path, capsys, records) -> str:
    """The one line `polyvis eval` prints for bad records (before any model is loaded)."""
    argv = ["eval", str(tmp_path / "no-model"), "--data", str(records)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- records files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["image", "images"])
def test_a_nul_in_an_image_path_is_a_bad_record_not_a_traceback(tmp_path, capsys, field):
    # A bad escape ("\u0000") in a record's path made every OS call raise ValueError, which no
    # image check caught: train and eval died with a traceback.
    rec = make_record("r-1", "img/a.png", [("Colour?", "red")])
    if field == "images":
        rec["images"] = [rec.pop("image")]
    rec[field] = ["img/a\u0000.png"] if field == "images" else "img/a\u0000.png"
    path = write_records(tmp_path / "train.jsonl", [*_records(2), rec])
    problem = "an image path contains a NUL character (\\u0000)"
    assert validate_record(rec) == [problem]
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == f"{path}: 1 bad record(s): r-1: {problem}"
    assert _eval_error(tmp_path, capsys, path).endswith(f"r-1: {problem}")
    # the loaders count such a path as unreadable rather than raise ValueError
    for load in (load_image, image_hash):
        with pytest.raises(ImageError) as info:
            load(tmp_path / "a\u0000.png")
        assert info.value.reason == "missing" and "null byte" in str(info.value)


def test_pretty_printed_or_glued_records_are_named_as_such(tmp_path, capsys):
    # json.dump(indent=2) into a .jsonl file, or a single record in a .json file, read as
    # "line 1: not valid JSON (column 2: Expecting property name enclosed in double quotes)".
    recs = _records(3)
    one = json.dumps(recs[0], indent=2)
    in_list = json.dumps(recs, indent=1)
    cases = {  # name: (text, the lines the first value spans)
        "pretty.jsonl": ("\n".join(json.dumps(r, indent=2) for r in recs), one.count("\n") + 1),
        "list.jsonl": (in_list, in_list.count("\n") + 1),
        "one.json": (one, one.count("\n") + 1),
    }
    for name, (text, last) in cases.items():
        path = tmp_path / name
        path.write_text(text + "\n")
        message = (
            f"{path}:1: a JSON value spread over lines 1-{last}: JSONL needs one record a line "
            "(and a .json file a list of records)"
        )
        with pytest.raises(DataError) as err:
            read_records(path)
        assert str(err.value) == message
    glued = tmp_path / "glued.jsonl"
    glued.write_text(json.dumps(recs[0]) + "\n" + json.dumps(recs[1]) + json.dumps(recs[2]))
    column = len(json.dumps(recs[1])) + 1
    message = (
        f"{glued}:2 (rec-1): more than one JSON value on the line (the next at column {column}); "
        "JSONL holds one record a line"
    )
    assert _eval_error(tmp_path, capsys, glued) == f"polyvis: error: {message}"
    glued.write_text(json.dumps(recs[0]) + "}\n")  # a stray brace is not a second record
    with pytest.raises(
        DataError, match=r":1 \(rec-0\): not valid JSON \(column \d+: Extra data\)$"
    ):
        read_records(glued)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_byte_that_is_not_utf8_names_its_line(tmp_path, capsys, bom):
    # It named only the offset (of the text after a byte order mark): in a file of many records
    # the user had to find the line themselves.
    lines = [json.dumps(r).encode() for r in _records(5)]
    lines[3] = lines[3].replace(b"Say it.", b"Caf\xe9?")  # a Latin-1 editor's save
    path = tmp_path / "train.jsonl"
    path.write_bytes(bom + b"\n".join(lines) + b"\n")
    offset = path.read_bytes().index(b"\xe9")
    message = f"{path}:4: not UTF-8 text (byte 0xe9 at offset {offset}); save it as UTF-8"
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == message
    assert _eval_error(tmp_path, capsys, path) == f"polyvis: error: {message}"


def test_a_utf16_records_file_is_named_as_such(tmp_path, capsys):
    # Saved as "Unicode" on Windows: it read as "not UTF-8 text (byte 0)".
    path = tmp_path / "val.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in _records(2)).encode("utf-16"))
    message = f"{path}: UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        read_records(path)
    assert _eval_error(tmp_path, capsys, path) == f"polyvis: error: {message}"


def test_a_folder_named_as_an_image_is_counted_as_missing_when_only_its_header_is_read(tmp_path):
    # Tiled encoders read image headers first; a folder counted as "corrupt" there but as
    # "missing" when decoded, so one record could be counted under two reasons.
    folder = tmp_path / "photo.png"
    folder.mkdir()
    for read in (header_size, load_image):
        with pytest.raises(ImageError) as info:
            read(folder)
        assert info.value.reason == "missing" and str(folder) in str(info.value)


# -- the server ---------------------------------------------------------------------------------------
def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )


def test_request_bodies_and_images_users_get_wrong_are_named_and_the_server_goes_on(server):
    ok = {"messages": user("hi"), "max_tokens": 2}
    field = "messages[0].content[0].image_url.url"

    def img(url: str) -> bytes:
        part = {"type": "image_url", "image_url": {"url": url}}
        content = [part, {"type": "text", "text": "x"}]
        return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 2})

    png = base64.b64decode(data_uri(noise(3, 8, 8)).split(",", 1)[1])
    refused = [
        # (body, param, message): each was a 400 before, with a message naming no cause
        (
            json.dumps(ok).encode("utf-16"),
            None,
            "the body is UTF-16 (it starts with a UTF-16 byte order mark); send UTF-8 JSON",
        ),
        (img("data:image/png;base64,"), field, "the image is empty (0 bytes)"),
        # both were served: an empty user turn, and stream_options OpenAI's API refuses
        (
            json.dumps({"messages": [{"role": "user", "content": []}], "max_tokens": 2}),
            "messages[0].content",
            "must be a string or a non-empty array of content parts",
        ),
        (
            json.dumps({**ok, "stream_options": {"include_usage": True}}),
            "stream_options",
            "only allowed when stream is true",
        ),
        (
            img("data:image/png;base64," + base64.b64encode(b"just some text").decode()),
            field,
            "cannot decode image (not an image format the server reads)",
        ),
        (
            img("data:image/png;base64," + base64.b64encode(png[:60]).decode()),
            field,
            "cannot decode image (image file is truncated)",
        ),
    ]
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        for body, param, message in refused:
            r = _post(client, body if isinstance(body, bytes) else body.encode())
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == param
            assert error["message"] == (f"{param}: {message}" if param else message)
            assert "object at 0x" not in r.text
            assert _post(client, json.dumps(ok).encode()).status_code == 200  # still serving
        # A UTF-8 byte order mark is read (RFC 8259 lets parsers ignore it), as in records files;
        # it was "malformed JSON body: expected value at line 1 column 1".
        r = _post(client, b"\xef\xbb\xbf" + json.dumps(ok).encode())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_an_id_that_is_true_or_false_is_a_bad_record(tmp_path):
    # JSON true passed as the integer 1 (bool is an int in Python), so next to a record with id 1
    # it was reported as a "duplicate id", and alone it was accepted as an id.
    recs = [make_record(1, None, [("Say it.", "1")]), make_record(True, None, [("Again.", "2")])]
    path = write_records(tmp_path / "train.jsonl", recs)
    problem = "'id' must be a string or an integer, not bool"
    assert validate_record(recs[1]) == [problem]
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == f"{path}: 1 bad record(s): #1: {problem}"


def test_openai_roles_in_a_record_are_one_problem_not_one_per_turn(tmp_path, capsys):
    # "user"/"assistant" gave one problem per turn and a false "0 <image> markers but 1 images"
    # (markers were counted only in turns from "human").
    rec = make_record("chat-1", "img/a.png", [("What?", "a"), ("And?", "b"), ("Then?", "c")])
    for turn in rec["conversations"]:
        turn["from"] = {"human": "user", "gpt": "assistant"}[turn["from"]]
    path = write_records(tmp_path / "val.jsonl", [*_records(2), rec])
    problem = "turn 0 is from 'user', expected 'human' (and 5 more turns)"
    assert validate_record(rec) == [problem]
    message = f"polyvis: error: {path}: 1 bad record(s): chat-1: {problem}"
    assert _eval_error(tmp_path, capsys, path) == message
    rec["conversations"][0]["from"] = "human"
    rec["conversations"][1]["from"] = "gpt"
    assert validate_record(rec) == ["turn 2 is from 'user', expected 'human' (and 3 more turns)"]
    rec["conversations"] = rec["conversations"][:3]  # one wrong turn left, and no answer to it
    assert validate_record(rec) == [
        "turn 2 is from 'user', expected 'human'",
        "conversation ends with a human turn (no answer)",
    ]


# -- training on records whose images are all unusable ----------------------------------------
def _image_records(tmp_path, name: str, good: int, bad: int) -> str:
    """good records with a real image, then bad ones whose image is not an image."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    recs = [make_record(f"{name}-ok-{i}", "red.png", [("Colour?", "red")]) for i in range(good)]
    recs += [make_record(f"{name}-bad-{i}", "broken.png", [("Colour?", "red")]) for i in range(bad)]
    return str(write_records(tmp_path / f"{name}.jsonl", recs))


def _train(tmp_path, *sets: str) -> None:
    from polyvis.config import load_config
    from polyvis.train import train

    base = ["train.stage=finetune", "train.max_steps=2", "train.batch_size=2"]
    cfg = load_config(NANO_TINY, [*base, *sets])
    train(cfg, tmp_path / "run", progress=False)


def test_a_val_set_with_nothing_usable_logs_nan_and_says_why_once(tmp_path, capsys):
    """It logged val_loss 0.0, a perfect score, for a val set whose every image was broken."""
    train_file = _image_records(tmp_path, "train", good=4, bad=0)
    val_file = _image_records(tmp_path, "val", good=0, bad=3)
    _train(tmp_path, f"data.train=[{train_file}]", f"data.val=[{val_file}]", "train.eval_every=1")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["val_loss"] != r["val_loss"] for r in rows)
    out = capsys.readouterr().out
    assert out.count("warning: data.val: no answer token could be scored") == 1


def test_training_data_with_no_usable_image_says_so(tmp_path):
    train_file = _image_records(tmp_path, "train", good=0, bad=4)
    with pytest.raises(
        DataError, match=r"no answer token to learn .*4 record\(s\) skipped as unusable"
    ):
        _train(tmp_path, f"data.train=[{train_file}]")


def test_the_feature_cache_names_the_file_it_could_not_decode(tmp_path, caplog):
    """It said only 'image da39a3ee... is not in the feature cache'."""
    train_file = _image_records(tmp_path, "train", good=3, bad=1)
    with caplog.at_level("WARNING", logger="polyvis.train.feature_cache"):
        _train(tmp_path, f"data.train=[{train_file}]", "train.cache_features=true")
    skips = [
        r.getMessage() for r in caplog.records if "skipping record train-bad-0" in r.getMessage()
    ]
    assert skips and "broken.png" in skips[0] and "not in the feature cache" not in skips[0]
