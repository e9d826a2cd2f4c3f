"""Parts of the server without HTTP: text streaming, image loading, request schema, batcher."""

from __future__ import annotations

import io
import random
import threading
import time

import pytest
import torch
from PIL import Image

from polyvis.errors import ConfigError
from polyvis.models.build import load_model
from polyvis.models.processing import PolyVisProcessor
from polyvis.serve.batcher import Batcher, Delta, Finished, GenerationParams, Started
from polyvis.serve.completions import check_prompt_length
from polyvis.serve.errors import APIError
from polyvis.serve.images import decode_image, load_image
from polyvis.serve.jobs import token_budget
from polyvis.serve.schema import format_loc, parse_request
from polyvis.serve.settings import ServeSettings
from polyvis.serve.textstream import TextStream


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return PolyVisProcessor.from_pretrained(tiny_model_dir).tokenizer


def run_stream(tokenizer, ids: list[int], stop=()) -> tuple[list[str], TextStream]:
    ts = TextStream(tokenizer, stop)
    deltas = [ts.push(i) for i in ids]
    deltas.append(ts.finish())
    return deltas, ts


def test_text_stream_deltas_add_up_to_the_full_decode(tokenizer):
    # Random ids include bytes that split multi-byte characters, the hard case for streaming.
    for seed in range(200):
        rng = random.Random(seed)
        ids = [rng.randrange(3, 400) for _ in range(rng.randrange(1, 25))]
        deltas, _ = run_stream(tokenizer, ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True), ids


def test_text_stream_cuts_at_the_first_stop_string_and_never_leaks_it(tokenizer):
    checked = 0
    for seed in range(100):
        rng = random.Random(seed)
        ids = [rng.randrange(3, 400) for _ in range(20)]
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if len(full) < 12 or "\ufffd" in full[4:9]:
            continue
        stop = full[5:9]
        deltas, ts = run_stream(tokenizer, ids, stop=["\x00never", stop])
        text = "".join(deltas)
        assert text == full[: full.index(stop)] and ts.stopped
        emitted = ""
        for d in deltas:  # no prefix of what was emitted so far ever contains the stop string
            emitted += d
            assert stop not in emitted
        checked += 1
    assert checked > 20
    deltas, ts = run_stream(tokenizer, [50, 60, 70], stop=["zzzz"])
    assert "".join(deltas) == tokenizer.decode([50, 60, 70]) and not ts.stopped


def png_bytes(size=(20, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "PNG")
    return buf.getvalue()


def test_images_are_rgb_and_local_or_remote_sources_need_permission(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(mode="LA"))
    img = load_image("a.png", "f", 10_000, 10_000, local_root=tmp_path.resolve())
    assert img.mode == "RGB" and img.size == (20, 10)
    with pytest.raises(
        APIError, match="local image paths are disabled.*--allow-local-files"
    ) as err:
        load_image(str(tmp_path / "a.png"), "messages[0].content[0].image_url.url", 10_000, 10_000)
    assert err.value.status == 400 and err.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(APIError, match="remote image URLs are disabled") as err:
        load_image("http://127.0.0.1/a.png", "f", 10_000, 10_000, local_root=tmp_path)
    assert err.value.code == "remote_urls_disabled"
    # The pixel limit is read from the header: a 20x10 image fails a 199-pixel limit, passes 200.
    with pytest.raises(APIError, match="20x10 = 200 pixels"):
        decode_image(png_bytes(), "f", 199)
    assert decode_image(png_bytes(), "f", 200).size == (20, 10)


def test_request_schema_accepts_openai_shapes_and_names_bad_fields():
    req = parse_request(
        b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", '
        b'"content": [{"type": "image_url", "image_url": "data:image/png;base64,AA=="}]}], '
        b'"stop": "END", "max_completion_tokens": 7, "temperature": 0, "n": 1, "stream": false}'
    )
    assert req.stop == ["END"] and req.token_limit == 7 and req.temperature == 0.0
    assert req.messages[0].content[0].text == "be brief"
    assert req.messages[1].content[0].image_url.url.startswith("data:")
    assert (
        format_loc(("messages", 0, "content", 2, "image_url", "url"))
        == "messages[0].content[2].image_url.url"
    )
    with pytest.raises(APIError) as err:
        parse_request(
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_completion_tokens": 1}'
        )
    assert err.value.param == "max_tokens" and "not both" in err.value.message


def test_a_prompt_over_the_context_is_refused_before_the_models_worker_tokenizes_it():
    calls = []

    def tokenizer(text, add_special_tokens=True):  # one token per character
        calls.append(len(text))
        return {"input_ids": list(range(len(text)))}

    check_prompt_length("x" * 100, tokenizer, 100, 3)  # fits: nothing counted
    assert calls == []
    with pytest.raises(APIError, match=r"^messages: the prompt is 101 tokens before its images"):
        check_prompt_length("x" * 101, tokenizer, 100, 3)  # counted, in this thread
    assert calls == [101]
    with pytest.raises(APIError, match=r"the prompt is 1201 characters, more than") as err:
        check_prompt_length("x" * 1201, tokenizer, 100, 3)  # 4 x 100 x 3: refused uncounted
    assert calls == [101] and err.value.code == "context_length_exceeded"
    check_prompt_length("x" * 10**6, tokenizer, None, 3)  # no known context: the worker decides
    # the worker's own count: with no max_tokens asked, the message does not invent one
    with pytest.raises(APIError, match=r"is 600 tokens \(images included\); it leaves no room"):
        token_budget(600, None, 512, 64)
    with pytest.raises(APIError, match=r"with max_tokens=20 it exceeds the model's context of 512"):
        token_budget(500, 20, 512, 64)


def test_settings_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="^max_batch: must be at least 1"):
        ServeSettings(max_batch=0)
    with pytest.raises(ConfigError, match="^max_waiting_steps: must not be negative, got -1"):
        ServeSettings(max_waiting_steps=-1)
    with pytest.raises(ConfigError, match="^allow_local_files: .* is not a directory"):
        ServeSettings(allow_local_files=tmp_path / "nope")
    assert ServeSettings(allow_local_files=tmp_path).allow_local_files == tmp_path.resolve()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_batcher_events_cancellation_and_shutdown(loaded):
    model, proc = loaded
    prompt = proc.apply_chat_template([{"role": "user", "content": "hi"}])
    batcher = Batcher(model, proc, max_batch=4, window_ms=1, max_queue=2, max_tokens_limit=16)
    with pytest.raises(APIError, match="not running") as err:
        batcher.generate(prompt)
    assert err.value.status == 503
    batcher.start()
    try:
        done = batcher.generate(prompt, params=GenerationParams(max_tokens=5))
        assert done.finish_reason == "length" and done.completion_tokens == 5
        ids = proc(text=[prompt])["input_ids"]
        assert done.prompt_tokens == ids.shape[1]
        with torch.no_grad():
            ref = model.generate(**proc(text=[prompt]), max_new_tokens=5, do_sample=False)[
                0, ids.shape[1] :
            ]
        assert done.text == proc.decode(ref)

        # A cancelled request stops at its next token and says so; nothing more is sent.
        events, holder, ready = [], {}, threading.Event()

        def sink(event):
            events.append(event)
            if isinstance(event, Delta):
                ready.wait(30)
                holder["job"].cancel()  # from inside the batch, so the timing is exact

        holder["job"] = batcher.submit(prompt, [], GenerationParams(max_tokens=16), sink)
        ready.set()
        assert wait_for(lambda: events and isinstance(events[-1], Finished))
        assert isinstance(events[0], Started) and [type(e) for e in events[1:-1]] == [Delta]
        assert events[-1].finish_reason == "cancelled" and events[-1].completion_tokens < 16

        # While the worker is busy, at most max_queue requests wait; the next one gets 503.
        release, answers = threading.Event(), []
        blocker = batcher.submit(
            prompt, [], GenerationParams(max_tokens=2), lambda e: release.wait(30)
        )
        assert wait_for(
            lambda: batcher.queued() == 0
        )  # the worker took it and is now stuck in the sink
        for _ in range(2):
            batcher.submit(prompt, [], GenerationParams(max_tokens=2), answers.append)
        with pytest.raises(APIError, match="too many requests") as err:
            batcher.submit(prompt, [], GenerationParams(max_tokens=2), answers.append)
        assert err.value.status == 503 and err.value.code == "queue_full"
        release.set()
        assert wait_for(lambda: sum(isinstance(e, Finished) for e in answers) == 2)
        assert blocker.params.max_tokens == 2
    finally:
        batcher.stop()


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_newcomers_join_a_running_batch_in_groups(loaded):
    """TGI's rule: waiting requests join when at least ratio x the running rows wait, or after
    max_waiting_steps steps; with max_waiting_steps=0, at every step."""
    model, proc = loaded
    batcher = Batcher(model, proc, max_waiting_steps=3, waiting_served_ratio=1.2)
    assert not batcher._admit_now(running=4)  # nothing waits
    batcher._queue.put("job")
    assert [batcher._admit_now(running=4) for _ in range(4)] == [False, False, False, True]
    batcher._queue.get_nowait()  # admitted
    for _ in range(4):
        batcher._queue.put("job")
    assert not batcher._admit_now(running=4)  # 4 waiting < 1.2 x 4, and the count started again
    batcher._queue.put("job")
    assert batcher._admit_now(running=4)  # enough wait: they join at once
    eager = Batcher(model, proc, max_waiting_steps=0)
    eager._queue.put("job")
    assert eager._admit_now(running=31)
