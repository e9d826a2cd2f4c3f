"""The HTTP server, end to end: a real uvicorn server on 127.0.0.1 and httpx clients."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
import torch

from _serve_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    AUTH,
    KEY,
    WORDS,
    answer_alone,
    data_uri,
    image_dir_fixture,
    noise,
    post_all,
    read_stream,
    reference_fixture,
    server_fixture,
    sharp_model_dir_fixture,
    user,
    wait_for,
)
from polyvis.models.build import load_model
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.settings import ServeSettings


def test_32_concurrent_requests_are_batched_and_equal_their_answers_alone(server, reference):
    cases = []
    for i in range(32):
        n_img = i % 3
        images = [noise(100 * i + j, 16 + 7 * j + i, 20 + i) for j in range(n_img)]
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 7))
        cases.append((text, images, 3 + i % 4))  # different prompt lengths, images and max_tokens
    bodies = [{"messages": user(t, ims), "max_tokens": m} for t, ims, m in cases]
    before = httpx.get(f"{server}/health").json()
    responses = post_all(server, bodies)
    after = httpx.get(f"{server}/health").json()

    assert [r.status_code for r in responses] == [200] * 32
    answers = [r.json() for r in responses]
    expected = [answer_alone(reference, t, ims, m) for t, ims, m in cases]
    got = [
        (a["choices"][0]["message"]["content"], a["choices"][0]["finish_reason"]) for a in answers
    ]
    assert got == [(text, reason) for text, reason, _ in expected]
    assert len({text for text, _, _ in expected}) > 20  # the answers really differ
    assert [a["usage"]["prompt_tokens"] for a in answers] == [n for _, _, n in expected]
    for a, (_, _, m) in zip(answers, cases):
        assert a["usage"]["completion_tokens"] <= m
        assert (
            a["usage"]["total_tokens"]
            == a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]
        )
    # They really ran batched: fewer generate calls than requests, some with several rows.
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32
    assert after["max_batch_seen"] > 1


def test_stop_strings_cut_the_answer_in_a_batch(server, reference):
    cases = [("how many objects", 12), ("describe the picture red", 12), ("blue square", 12)]
    full = [answer_alone(reference, t, [], m)[0] for t, m in cases]
    stops = [f[3:5] for f in full]  # a stop string known to occur in each answer
    bodies = [
        {"messages": user(t), "max_tokens": m, "stop": [s, "\x00never"]}
        for (t, m), s in zip(cases, stops)
    ]
    answers = [r.json()["choices"][0] for r in post_all(server, bodies)]
    assert [a["message"]["content"] for a in answers] == [
        f[: f.index(s)] for f, s in zip(full, stops)
    ]
    assert {a["finish_reason"] for a in answers} == {"stop"}


def test_streaming_gives_the_same_answer_as_non_streaming(server):
    body = {"messages": user("describe the picture", [noise(3, 30, 20)]), "max_tokens": 10}
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        whole = client.post("/v1/chat/completions", json=body).json()
        chunks, raw = read_stream(
            client, {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
    assert raw[-1] == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len(
        {c["id"] for c in chunks}
    ) == 1
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([c for c in content if c]) > 1  # several deltas, not one blob
    assert "".join(content) == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_api_key_is_required_on_v1_but_not_on_health(server):
    body = {"messages": user("hi"), "max_tokens": 2}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ):
        r = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    models = httpx.get(f"{server}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert httpx.get(f"{server}/v1/models/tiny", headers=AUTH).json()["id"] == "tiny"
    assert httpx.get(f"{server}/v1/models/other", headers=AUTH).status_code == 404
    assert httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH).status_code == 200


def test_local_files_inside_the_allowed_dir_equal_the_inline_image(server, image_dir):
    inline = {"messages": user("what is in the image", [noise(7, 24, 20)]), "max_tokens": 6}
    texts = []
    for url in (
        data_uri(noise(7, 24, 20)),
        str(image_dir / "cat.png"),
        (image_dir / "cat.png").as_uri(),
        "cat.png",
    ):
        inline["messages"][0]["content"][0]["image_url"]["url"] = url
        r = httpx.post(f"{server}/v1/chat/completions", json=inline, headers=AUTH)
        assert r.status_code == 200, r.text
        texts.append(r.json()["choices"][0]["message"]["content"])
    assert len(set(texts)) == 1


def test_seeded_sampling_is_reproducible(server):
    body = {"messages": user("red square"), "max_tokens": 8, "temperature": 1.5, "seed": 11}
    a, b = (
        httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH).json()
        for _ in range(2)
    )
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_cli_serve_binds_127_0_0_1_and_reads_the_env_api_key(sharp_model_dir, monkeypatch, capsys):
    import uvicorn

    from polyvis.cli import main

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: launched.update(app=app, **kw))
    monkeypatch.setenv("POLYVIS_API_KEY", "env-key")
    threads = torch.get_num_threads()
    try:
        assert (
            main(
                [
                    "serve",
                    str(sharp_model_dir),
                    "--port",
                    "8123",
                    "--max-batch",
                    "4",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert (launched["host"], launched["port"]) == ("127.0.0.1", 8123)
    assert launched["app"].state.settings.max_batch == 4
    assert launched["app"].state.settings.engine == "process"  # the CLI's default
    with BackgroundServer(launched["app"]) as url:  # the very app the command built
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer env-key"}).json()
        assert models["data"][0]["id"] == "model"  # the directory name
    monkeypatch.delenv("POLYVIS_API_KEY")
    assert main(["serve", str(sharp_model_dir), "--host", "0.0.0.0"]) == 0
    assert "serving on 0.0.0.0 without an API key" in capsys.readouterr().err
    missing = str(sharp_model_dir.parent / "missing")
    assert main(["serve", missing]) == 2  # a one-line error, no traceback
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", str(sharp_model_dir)]) == 2
    assert "pip install 'polyvis[serve]'" in capsys.readouterr().err


def test_clients_that_go_away_stop_their_generation_and_failures_stay_contained(
    sharp_model_dir, monkeypatch
):
    model, processor = load_model(sharp_model_dir)
    forward = model.forward

    broken = []

    def slow_forward(*args, **kwargs):  # 50 ms a token: a 32-token answer takes > 1.6 s
        time.sleep(0.05)
        if broken:
            raise RuntimeError("simulated failure")
        return forward(*args, **kwargs)

    model.forward = slow_forward
    app = create_app(sharp_model_dir, ServeSettings(max_tokens_limit=32), loaded=(model, processor))
    body = {"messages": user("describe the picture"), "max_tokens": 32, "stop": ["\x00never"]}
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the answer has started; now hang up
        assert wait_for(lambda: client.get("/health").json()["cancelled"] == 1)
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body, timeout=0.3)
        assert wait_for(lambda: client.get("/health").json()["cancelled"] == 2)
        r = client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2

        # A failing generate: 500 (or an error event in a stream), and the worker carries on.
        broken.append(True)
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 500 and "simulated failure" in r.json()["error"]["message"]
        chunks, raw = read_stream(client, {**body, "stream": True})
        assert "simulated failure" in chunks[-1]["error"]["message"] and raw[-1] == "data: [DONE]"
        broken.clear()
        r = client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2

        # A bug in the front end: a JSON 500 in OpenAI's shape, and the server carries on.
        def bug(*args):
            raise KeyError("simulated bug")

        monkeypatch.setattr("polyvis.serve.app.check_prompt_length", bug)
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 500 and "simulated bug" in r.json()["error"]["message"]
        monkeypatch.undo()
        r = client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200
