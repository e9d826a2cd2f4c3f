"""`polyvis serve --engine process`: the models in a process of their own behind the same API.

One engine process is started for the module (spawning it imports torch, a few seconds)."""

from __future__ import annotations

import os
import pickle
import signal
import sys

import httpx
import pytest

from _serve_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    AUTH,
    KEY,
    answer_alone,
    noise,
    post_all,
    read_stream,
    reference_fixture,
    sharp_model_dir_fixture,
    user,
    wait_for,
)
from polyvis.errors import ConfigError
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.errors import APIError
from polyvis.serve.jobs import Delta, Finished, collecting
from polyvis.serve.settings import ServeSettings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="spawned engine, POSIX signals")


def settings(**kw) -> ServeSettings:
    base = dict(model_name="tiny", api_key=KEY, max_batch=8, max_tokens_limit=24, engine="process")
    return ServeSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def engine_app(sharp_model_dir):
    app = create_app(sharp_model_dir, settings())
    with BackgroundServer(app) as url:
        yield app, url


def test_answers_through_the_engine_process_equal_generate_alone(engine_app, reference):
    app, url = engine_app
    cases = [("what is in the image?", 5, 3), ("describe the picture.", 9, 11), ("red", 11, 24)]
    bodies = [{"messages": user(q, [noise(seed, 40, 30)]), "max_tokens": n} for q, seed, n in cases]
    replies = post_all(url, bodies)
    for (q, seed, n), r in zip(cases, replies):
        assert r.status_code == 200, r.text
        text, reason, prompt_tokens = answer_alone(reference, q, [noise(seed, 40, 30)], n)
        choice = r.json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (text, reason)
        assert r.json()["usage"]["prompt_tokens"] == prompt_tokens
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        chunks, _ = read_stream(
            client, {"messages": user("red", [noise(11, 40, 30)]), "max_tokens": 24, "stream": True}
        )
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert streamed == answer_alone(reference, "red", [noise(11, 40, 30)], 24)[0]
        health = client.get("/health").json()
    assert health["status"] == "ok" and health["requests"] >= 4 and health["queued"] == 0
    assert os.getpid() != app.state.batcher.engine._process.pid  # a process of its own


def test_one_engine_process_serves_several_models_each_its_own_answers(
    sharp_model_dir, tiny_model_dir, reference
):
    from polyvis.models.build import load_model

    app = create_app({"sharp": sharp_model_dir, "plain": tiny_model_dir}, settings(model_name=None))
    image = noise(5, 40, 30)
    with BackgroundServer(app) as url:
        replies = post_all(
            url,
            [{"model": m, "messages": user("describe", [image]), "max_tokens": 6}
             for m in ("sharp", "plain")],
        )  # fmt: skip
        health = httpx.get(f"{url}/health", headers=AUTH).json()
    expected = [
        answer_alone(ref, "describe", [image], 6)[0]
        for ref in (reference, load_model(tiny_model_dir))
    ]
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == expected
    assert health["per_model"]["sharp"]["requests"] == health["per_model"]["plain"]["requests"] == 1


def test_errors_from_the_engine_keep_their_status_and_field(engine_app):
    _, url = engine_app
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        long_prompt = " ".join(["what is in the image"] * 400)
        r = client.post("/v1/chat/completions", json={"messages": user(long_prompt)})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "messages"
        ok = client.post("/v1/chat/completions", json={"messages": user("red"), "max_tokens": 2})
        assert ok.status_code == 200  # the engine goes on


def test_a_dead_engine_gives_503_and_an_unhealthy_server_that_stays_up(sharp_model_dir):
    app = create_app(sharp_model_dir, settings())
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        assert c.post("/v1/chat/completions", json={"messages": user("red")}).status_code == 200
        engine = app.state.batcher.engine
        os.kill(engine._process.pid, signal.SIGKILL)
        assert wait_for(lambda: not engine.running)
        r = c.post("/v1/chat/completions", json={"messages": user("red")})
        assert r.status_code == 503 and "not running" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 503


def test_an_engine_process_needs_model_directories(sharp_model_dir, reference, tmp_path):
    with pytest.raises(ConfigError, match="engine"):
        create_app({"a": reference}, ServeSettings(engine="process"))
    with pytest.raises(ConfigError, match="no config.json"):
        create_app(tmp_path, ServeSettings(engine="process"))
    with pytest.raises(ConfigError, match="engine: must be one of thread, process"):
        ServeSettings(engine="processes")


def test_api_errors_cross_a_process_boundary_whole():
    err = pickle.loads(pickle.dumps(APIError(400, "too long", "messages", "context_length")))
    assert (err.status, err.message, err.param, err.code) == (
        400,
        "too long",
        "messages",
        "context_length",
    )
    assert str(err) == "messages: too long"


def test_collecting_joins_the_deltas_and_hands_them_over_with_finished():
    got = []
    sink = collecting(got.append)
    for part in ["a", "b", "c"]:
        sink(Delta(part))
    assert got == []
    sink(Finished("length", 5, 3))
    assert got == [Delta("abc"), Finished("length", 5, 3)]
