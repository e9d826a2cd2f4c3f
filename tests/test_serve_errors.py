"""Malformed and oversized requests: each gets a 4xx naming the field, and the server goes on."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from PIL import Image

from _serve_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    AUTH,
    WORDS,
    data_uri,
    image_dir_fixture,
    noise,
    server_fixture,
    sharp_model_dir_fixture,
    user,
)


def malformed_requests(image_dir: Path) -> list[tuple[str, object, int, str | None]]:
    """(name, body: bytes or a JSON-able dict, expected status, expected `param` or None)."""
    ok = {"messages": user("hi"), "max_tokens": 2}

    def msg(content) -> dict:
        return {"messages": [{"role": "user", "content": content}], "max_tokens": 2}

    def img(url: str) -> dict:
        return msg(
            [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]
        )

    png = data_uri(noise(1, 8, 8))
    b64 = png.split(",", 1)[1]
    return [
        ("truncated json", b'{"messages": [', 400, None),
        ("not json", b"hello", 400, None),
        ("empty body", b"", 400, None),
        ("array body", b"[1, 2]", 400, None),
        ("deep nesting", b"[" * 5000 + b"]" * 5000, 400, None),
        (
            "NaN",
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            400,
            "temperature",
        ),
        ("no messages", {"max_tokens": 2}, 400, "messages"),
        ("empty messages", {"messages": []}, 400, "messages"),
        ("messages not a list", {"messages": "hi"}, 400, "messages"),
        ("message not an object", {"messages": [5]}, 400, "messages[0]"),
        ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ("content a number", msg(5), 400, "messages[0].content"),
        (
            "unknown part type",
            msg([{"type": "audio", "audio": "x"}]),
            400,
            "messages[0].content[0].type",
        ),
        ("text part without text", msg([{"type": "text"}]), 400, "messages[0].content[0]"),
        ("image part without url", msg([{"type": "image_url"}]), 400, "messages[0].content[0]"),
        (
            "url a number",
            msg([{"type": "image_url", "image_url": {"url": 5}}]),
            400,
            "messages[0].content[0].image_url.url",
        ),
        ("max_tokens a string", {**ok, "max_tokens": "5"}, 400, "max_tokens"),
        ("max_tokens a float", {**ok, "max_tokens": 2.5}, 400, "max_tokens"),
        ("max_tokens zero", {**ok, "max_tokens": 0}, 400, "max_tokens"),
        ("max_tokens over the limit", {**ok, "max_tokens": 1000}, 400, "max_tokens"),
        ("temperature negative", {**ok, "temperature": -1}, 400, "temperature"),
        ("temperature a string", {**ok, "temperature": "hot"}, 400, "temperature"),
        ("top_p zero", {**ok, "top_p": 0}, 400, "top_p"),
        ("n=2", {**ok, "n": 2}, 400, "n"),
        ("stream a string", {**ok, "stream": "yes"}, 400, "stream"),
        ("stop a number", {**ok, "stop": 5}, 400, "stop"),
        ("empty stop", {**ok, "stop": [""]}, 400, "stop"),
        ("five stops", {**ok, "stop": list("abcde")}, 400, "stop"),
        ("unknown field", {**ok, "foo": 1}, 400, "foo"),
        ("unknown stream option", {**ok, "stream_options": {"x": 1}}, 400, "stream_options.x"),
        ("penalty", {**ok, "presence_penalty": 1.0}, 400, "presence_penalty"),
        ("logprobs", {**ok, "logprobs": True}, 400, "logprobs"),
        ("unknown model", {**ok, "model": "gpt-4"}, 404, "model"),
        ("image marker in text", msg("look: <image>"), 400, "messages[0].content[0].text"),
        (
            "image in an assistant turn",
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "image_url", "image_url": {"url": png}}],
                    }
                ]
            },
            400,
            "messages[0].content[0]",
        ),
        (
            "four images",
            msg([{"type": "image_url", "image_url": {"url": png}}] * 4),
            400,
            "messages",
        ),
        (
            "bad base64",
            img("data:image/png;base64,@@@@"),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "not base64 encoded",
            img("data:image/png," + b64),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "wrong media type",
            img("data:text/plain;base64," + b64),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "not an image",
            img("data:image/png;base64," + base64.b64encode(b"GIF89a but not really").decode()),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "truncated png",
            img("data:image/png;base64," + base64.b64encode(base64.b64decode(b64)[:60]).decode()),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "too many pixels",
            img(data_uri(Image.new("RGB", (300, 300)))),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "too many bytes",
            img(data_uri(noise(2, 190, 190))),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "remote url",
            img("https://example.com/cat.png"),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "path outside the allowed dir",
            img(str(image_dir.parent / "elsewhere.png")),
            403,
            "messages[0].content[0].image_url.url",
        ),
        ("dot-dot escape", img("../../etc/passwd"), 403, "messages[0].content[0].image_url.url"),
        (
            "missing local file",
            img(str(image_dir / "nope.png")),
            400,
            "messages[0].content[0].image_url.url",
        ),
        ("prompt over the context", msg(" ".join(WORDS) * 40), 400, "messages"),
        # refused in the request's thread, uncounted: the model's worker never tokenizes it
        ("prompt far over the context", msg("what is the picture " * 10_000), 400, "messages"),
        ("seed over 64 bits", {**ok, "temperature": 1, "seed": 2**64}, 400, "seed"),
        ("seed under -2**63", {**ok, "temperature": 1, "seed": -(2**63) - 1}, 400, "seed"),
        ("NUL in a local path", img("red\u0000.png"), 400, "messages[0].content[0].image_url.url"),
        (
            "local file name too long",
            img("a" * 300 + ".png"),
            400,
            "messages[0].content[0].image_url.url",
        ),
        (
            "streamed, over the context",
            {**msg(" ".join(WORDS) * 40), "stream": True},
            400,
            "messages",
        ),
        ("body over the limit", {**ok, "user": "x" * 300_000}, 413, None),
    ]


def test_malformed_requests_get_4xx_and_the_server_keeps_answering(server, image_dir):
    cases = malformed_requests(image_dir)
    assert len(cases) >= 30
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        for name, body, status, param in cases:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(
                "/v1/chat/completions",
                content=content,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == status, (name, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"], name
            assert error["param"] == param, (name, error)
        r = client.get("/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert client.get("/v1/nothing").status_code == 404
        r = client.post("/v1/chat/completions", json={"messages": user("hi"), "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_bodies_not_declared_json_get_415_naming_the_type_and_the_server_goes_on(server):
    # A valid request: only its declared type is wrong. Browsers send text/plain, form and
    # multipart bodies cross-site without a CORS preflight.
    body = json.dumps({"messages": user("hi"), "max_tokens": 2}).encode()
    refused = [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        "",
    ]
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        for ctype in refused:
            r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": ctype})
            assert r.status_code == 415, (ctype, r.text)
            assert "\n" not in r.text.strip()
            error = r.json()["error"]
            assert error["code"] == "unsupported_media_type" and error["param"] is None
            if ctype:
                assert f"unsupported Content-Type {ctype!r}" in error["message"]
            else:
                assert error["message"] == "missing Content-Type; send application/json"
        # no Content-Type header at all
        r = client.post("/v1/chat/completions", content=body)
        assert "content-type" not in r.request.headers
        assert r.status_code == 415
        assert r.json()["error"]["message"] == "missing Content-Type; send application/json"
        # the key is still checked first
        r = httpx.post(
            f"{server}/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 401
        # JSON with parameters or in upper case is JSON; the same connection still answers
        for ctype in ("application/json; charset=utf-8", "Application/JSON"):
            r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": ctype})
            assert r.status_code == 200, (ctype, r.text)
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
