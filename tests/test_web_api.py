"""The server side of the web page: GET / and its files (offline, under a strict policy), and
several models served side by side (`polyvis serve A B C`), without a browser."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from _serve_helpers import noise, user
from _web_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    KEY,
    MODELS,
    model_dirs_fixture,
    reference_answer,
    references_fixture,
    web_server_fixture,
)
from polyvis.cli.serve import model_sources
from polyvis.errors import ConfigError
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.page import CSP, WEB_DIR
from polyvis.serve.served import model_ids
from polyvis.serve.settings import ServeSettings

AUTH = {"Authorization": f"Bearer {KEY}"}


def test_the_page_and_its_files_are_served_without_a_key_under_a_strict_policy(web_server):
    page = httpx.get(web_server + "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP
    assert page.text == (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for name, kind in [
        ("app.js", "text/javascript"),
        ("boxes.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        r = httpx.get(f"{web_server}/web/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == f"{kind}; charset=utf-8"
        assert r.text == (WEB_DIR / name).read_text(encoding="utf-8")
    assert httpx.get(web_server + "/web/secret.txt").status_code == 404


def test_the_page_loads_nothing_from_elsewhere():
    links = []
    for name in ("index.html", "app.js", "boxes.js", "style.css"):
        text = (WEB_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"https?:|//[a-z]", text, re.IGNORECASE), name
        links += re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sorted(links) == ["data:,", "web/app.js", "web/boxes.js", "web/style.css"]


def test_web_off_serves_the_api_only(model_dirs):
    settings = ServeSettings(web=False)
    with BackgroundServer(create_app(model_dirs["alpha"], settings)) as url:
        assert httpx.get(url + "/").status_code == 404
        assert httpx.get(url + "/web/app.js").status_code == 404
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "model"


def test_several_models_are_listed_in_order_and_each_answers_itself(web_server, references):
    ids = [m["id"] for m in httpx.get(web_server + "/v1/models", headers=AUTH).json()["data"]]
    assert ids == list(MODELS)
    assert httpx.get(web_server + "/v1/models/gamma", headers=AUTH).json()["id"] == "gamma"
    image = noise(11, 20, 16)
    before = httpx.get(web_server + "/health").json()
    with httpx.Client(base_url=web_server, headers=AUTH, timeout=60) as client:
        got = {}
        for model in [None, *MODELS]:
            body = {"messages": user("describe the picture", [image]), "max_tokens": 8}
            if model is not None:
                body["model"] = model
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            got[model] = (r.json()["model"], r.json()["choices"][0]["message"]["content"])
    expected = {
        m: reference_answer(references[m], [("describe the picture", None)], image, 8)
        for m in MODELS
    }
    assert got[None] == ("alpha", expected["alpha"])  # no "model": the first one
    assert {m: got[m] for m in MODELS} == {m: (m, expected[m]) for m in MODELS}
    assert len(set(expected.values())) == len(MODELS)
    after = httpx.get(web_server + "/health").json()
    assert after["models"] == list(MODELS) and after["model"] == "alpha"
    per = {
        m: after["per_model"][m]["requests"] - before["per_model"][m]["requests"] for m in MODELS
    }
    assert per == {"alpha": 2, "beta": 1, "gamma": 1, "delta": 1}
    assert after["requests"] - before["requests"] == 5


def test_an_unknown_model_is_refused_naming_the_served_ones(web_server):
    body = {"model": "omega", "messages": user("hi"), "max_tokens": 2}
    r = httpx.post(web_server + "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["message"] == (
        "model: no model 'omega'; this server serves 'alpha', 'beta', 'gamma', 'delta'"
    )
    assert (err["param"], err["code"]) == ("model", "model_not_found")
    assert httpx.get(web_server + "/v1/models/omega", headers=AUTH).status_code == 404


def test_one_model_keeps_its_health_shape(model_dirs):
    settings = ServeSettings(model_name="solo")
    with BackgroundServer(create_app(model_dirs["beta"], settings)) as url:
        health = httpx.get(url + "/health").json()
    assert health == {
        "status": "ok",
        "model": "solo",
        "models": ["solo"],
        "queued": 0,
        "requests": 0,
        "batches": 0,
        "max_batch_seen": 0,
        "cancelled": 0,
    }


def test_model_ids_are_names_or_the_shortest_tail_that_tells_them_apart(tmp_path: Path):
    dirs = [tmp_path / "demo/runs/clip-nano/final", tmp_path / "demo/runs/vary-nano/final"]
    dirs += [tmp_path / "other/model", tmp_path / "x/a/m", tmp_path / "y/a/m"]
    assert model_ids(dirs) == ["clip-nano/final", "vary-nano/final", "model", "x/a/m", "y/a/m"]
    with pytest.raises(ConfigError, match="models: the same model directory is given twice"):
        model_ids([tmp_path / "a", tmp_path / "b/../a"])


def test_cli_model_arguments_take_ids(tmp_path: Path):
    for d in ("runs/a/final", "runs/b/final", "c"):
        (tmp_path / d).mkdir(parents=True)
    given = [str(tmp_path / "runs/a/final"), f"fused={tmp_path / 'runs/b/final'}"]
    assert model_sources(given) == {
        "final": tmp_path / "runs/a/final",
        "fused": tmp_path / "runs/b/final",
    }
    both = [str(tmp_path / "runs/a/final"), str(tmp_path / "runs/b/final")]
    assert list(model_sources(both)) == ["a/final", "b/final"]
    with pytest.raises(ConfigError, match="two models would have the id 'c'"):
        model_sources([str(tmp_path / "c"), f"c={tmp_path / 'runs/a/final'}"])
    with pytest.raises(ConfigError, match="is not a model directory"):
        model_sources([str(tmp_path / "missing")])


def test_a_mapping_of_models_refuses_a_single_model_name(model_dirs):
    with pytest.raises(ConfigError, match="model_name: name each model in the mapping"):
        create_app({"a": model_dirs["alpha"]}, ServeSettings(model_name="x"))


def test_polyvis_serve_takes_several_model_directories(model_dirs, monkeypatch, capsys):
    import uvicorn

    from polyvis.cli import main

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: launched.update(app=app, **kw))
    argv = ["serve", f"a={model_dirs['alpha']}", str(model_dirs["beta"]), "--port", "8124"]
    assert main(argv) == 0
    assert "polyvis: serving a, model; chat at http://127.0.0.1:8124/" in capsys.readouterr().out
    assert list(launched["app"].state.served) == ["a", "model"]  # beta's directory is "model"
    assert launched["app"].state.settings.web is True
    assert main(["serve", str(model_dirs["gamma"]), "--no-web"]) == 0
    assert launched["app"].state.settings.web is False
    assert main(["serve", *argv[1:3], "--model-name", "x"]) == 2
    assert "--model-name: names one model; with several, give ID=DIR" in capsys.readouterr().err
