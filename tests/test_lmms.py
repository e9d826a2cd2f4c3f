"""The lmms-eval plugin against a stand-in of lmms-eval's interface (lmms-eval itself is not
installed: it pulls in torchvision, wandb, ...). The stand-in copies lmms-eval 0.7.3's `lmms` base
class, `Instance` and `ModelManifest`; requests are built the way its tasks build them, and
multiple-choice answers are scored by a copy of its scorer."""

from __future__ import annotations

import abc
import importlib
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polyvis.data.images import load_image
from polyvis.data.records import read_records, record_image_paths
from polyvis.data.template import prompt_ids
from polyvis.errors import ConfigError, DataError
from polyvis.eval import lmms as plugin
from polyvis.eval.runner import evaluate
from polyvis.models.build import load_model, save_model

NEW = 6


# ---- the stand-in: lmms_eval.api.model.lmms, lmms_eval.api.instance.Instance, ModelManifest ----
class _CacheHook:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_partial(self, attr, req, res) -> None:
        self.calls.append((attr, req, res))


class lmms(abc.ABC):  # noqa: N801 - lmms-eval's name
    is_simple: bool = True

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1
        self.cache_hook = _CacheHook()
        self.task_dict: dict = {}

    @abc.abstractmethod
    def loglikelihood(self, requests): ...

    @abc.abstractmethod
    def generate_until(self, requests): ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests): ...

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size


@dataclass
class Instance:
    request_type: str
    arguments: tuple
    idx: int
    metadata: dict = field(default_factory=dict)
    resps: list = field(default_factory=list)
    task_name: str | None = None
    doc_id: Any = None
    repeats: Any = None

    def __post_init__(self) -> None:
        self.task_name = self.metadata["task"]
        self.doc_id = self.metadata["doc_id"]
        self.repeats = self.metadata["repeats"]

    @property
    def args(self):
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


@dataclass(frozen=True)
class ModelManifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
    aliases: tuple = ()


@pytest.fixture
def stand_in(monkeypatch):
    """lmms_eval's modules in sys.modules, and a fresh PolyVisLMMs class built on them."""
    mods = {}
    for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.models"):
        mods[name] = types.ModuleType(name)
    mods["lmms_eval.api.model"] = types.ModuleType("lmms_eval.api.model")
    mods["lmms_eval.api.model"].lmms = lmms
    mods["lmms_eval.api.instance"] = types.ModuleType("lmms_eval.api.instance")
    mods["lmms_eval.api.instance"].Instance = Instance
    mods["lmms_eval.models.registry_v2"] = types.ModuleType("lmms_eval.models.registry_v2")
    mods["lmms_eval.models.registry_v2"].ModelManifest = ModelManifest
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(plugin, "_CLASS", None)
    return plugin.PolyVisLMMs


# ---- a model whose answers differ from prompt to prompt, and some data ----------------------
@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = load_model(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random LM weights: answers that depend on the prompt
        for name, w in model.named_parameters():
            if w.dim() >= 2 and ("language_model" in name or "adapter" in name):
                w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return save_model(model, processor, tmp_path_factory.mktemp("lmmsmodel") / "model")


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("lmmsdata")
    generate(["chart"], n=20, seed=1, out=out, image_size=32, progress=False)
    return out / "chart" / "val.jsonl"


def _docs(records_file: Path) -> list[dict]:
    """lmms-eval style docs: the question (no image marker) and the PIL image."""
    docs = []
    for rec in read_records(records_file):
        q = rec["conversations"][0]["value"].replace("<image>", "").strip()
        image = load_image(record_image_paths(rec, records_file.parent)[0])
        docs.append(
            {
                "id": rec["id"],
                "question": q,
                "image": image,
                "answer": rec["conversations"][1]["value"],
            }
        )
    return docs


def _request(kind: str, doc_id: int, args: tuple) -> Instance:
    return Instance(kind, args, 0, metadata={"task": "charts", "doc_id": doc_id, "repeats": 1})


def _doc_to_visual(doc: dict) -> list:
    return [doc["image"]]


# ---- tests ----------------------------------------------------------------------------------
def test_plugin_class_needs_lmms_eval_only_when_used(monkeypatch):
    # This module imported polyvis.eval.lmms without lmms-eval; the class itself needs it.
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # `import lmms_eval` now fails
    monkeypatch.setattr(plugin, "_CLASS", None)
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        plugin.PolyVisLMMs  # noqa: B018 - the attribute access builds the class


def test_registration_payload_resolves_to_an_lmms_subclass(stand_in):
    manifest = plugin.lmms_eval_manifest()
    assert manifest == ModelManifest("polyvis", simple_class_path="polyvis.eval.lmms.PolyVisLMMs")
    module, name = manifest.simple_class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)  # what lmms-eval's registry does
    assert cls is stand_in and issubclass(cls, lmms) and cls.is_simple
    assert not getattr(cls, "__abstractmethods__", None)


def test_generate_until_equals_the_runner(stand_in, model_dir, records_file, tmp_path):
    docs = _docs(records_file)
    model, processor = load_model(model_dir)
    evaluate(model, processor, [records_file], out_dir=tmp_path, max_new_tokens=NEW, progress=False)
    runner = [
        json.loads(line)["prediction"]
        for line in (tmp_path / "answers.jsonl").read_text().splitlines()
    ]
    assert len(set(runner)) > 1

    lm = stand_in(pretrained=str(model_dir), batch_size=3, progress=False)
    lm.task_dict = {"charts": {"val": dict(enumerate(docs))}}
    requests, expected = [], []
    for i, doc in enumerate(docs):
        gen = {"max_new_tokens": NEW, "temperature": 0, "do_sample": False}
        want = runner[i]
        stop = next((c for c in want[2:] if not c.isspace()), None)
        if i % 2 and stop is not None:  # a second options group, with a stop string that cuts
            gen["until"] = [stop]
            want = want[: want.index(stop)].strip()
        requests.append(
            _request(
                "generate_until", i, (doc["question"], gen, _doc_to_visual, i, "charts", "val")
            )
        )
        expected.append(want)
    assert lm.generate_until(requests) == expected
    assert len(lm.cache_hook.calls) == len(docs)


def test_loglikelihood_matches_a_token_by_token_computation(stand_in, model_dir, records_file):
    docs = _docs(records_file)[:4]
    lm = stand_in(pretrained=str(model_dir), batch_size=2, progress=False)
    lm.task_dict = {"charts": {"val": dict(enumerate(docs))}}
    model, processor, tok = lm.model, lm.processor, lm.tokenizer

    def manual(doc: dict, cont: list[int]) -> tuple[float, bool]:
        """Mean of -log p (lmms-eval's llava loss), one unpadded forward per continuation token."""
        prompt = prompt_ids(processor, [{"role": "user", "content": "<image>\n" + doc["question"]}])
        pv = processor.preprocess_images([doc["image"]])
        total, greedy = 0.0, True
        with torch.no_grad():
            for k, t in enumerate(cont):
                ids = torch.tensor([prompt + cont[:k]])
                logits = model(input_ids=ids, pixel_values=pv).logits[0, -1].float()
                total += float(torch.log_softmax(logits, -1)[t])
                greedy &= int(logits.argmax()) == t
        return -total / len(cont), greedy

    # The greedy continuation (cut at EOS), kept where its text re-tokenises to the same ids.
    greedy_texts = {}
    for i, doc in enumerate(docs):
        prompt = prompt_ids(processor, [{"role": "user", "content": "<image>\n" + doc["question"]}])
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                pixel_values=processor.preprocess_images([doc["image"]]),
                max_new_tokens=4,
                do_sample=False,
            )
        ids = [t for t in out[0, len(prompt) :].tolist() if t != tok.eos_token_id]
        text = tok.decode(ids)
        if ids and tok(text, add_special_tokens=False)["input_ids"] == ids:
            greedy_texts[i] = text
    assert greedy_texts, "no greedy continuation survives a decode / encode round trip"

    requests, expected = [], []
    for i, doc in enumerate(docs):  # the reference answer, given by a doc_to_target function
        requests.append(
            _request(
                "loglikelihood",
                i,
                (doc["question"], lambda d: d["answer"], _doc_to_visual, i, "charts", "val"),
            )
        )
        expected.append(manual(doc, tok(doc["answer"], add_special_tokens=False)["input_ids"]))
    for i, text in greedy_texts.items():
        requests.append(
            _request(
                "loglikelihood", i, (docs[i]["question"], text, _doc_to_visual, i, "charts", "val")
            )
        )
        expected.append(manual(docs[i], tok(text, add_special_tokens=False)["input_ids"]))
    got = lm.loglikelihood(requests)
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-3)
    assert all(g[1] for g in got[len(docs) :])  # the greedy continuations are greedy
    # lmms-eval's unconditional requests: (context, continuation), no image.
    ((loss, _),) = lm.loglikelihood([_request("loglikelihood", 0, ("", " yes"))])
    assert loss > 0


def lmms_eval_multiple_choice(results: list[tuple[float, bool]], choices: list[str], gold: int):
    """lmms-eval's score of one multiple_choice doc, copied from lmms_eval/api/task.py,
    `ConfigurableTask.process_results`, its `OUTPUT_TYPE == "multiple_choice"` branch (lines
    1606-1666 at EvolvingLMMs-Lab/lmms-eval commit 75571cfe, v0.7.2-41; here without mutual
    information and with one gold index): `pred = np.argmin(lls)` and
    `pred_norm = np.argmin(lls / completion_len)`, an argmin because lmms-eval's llava models
    return the continuation's mean loss (lmms_eval/models/simple/llava_hf.py, `loglikelihood`,
    lines 235-243: `float(outputs["loss"])`)."""
    lls, is_greedy = zip(*results)
    completion_len = np.array([float(len(i)) for i in choices])
    pred = np.argmin(lls)
    pred_norm = np.argmin(lls / completion_len)
    return {
        "pred": int(pred),
        "acc": 1.0 if pred == gold else 0.0,
        "acc_norm": 1.0 if pred_norm == gold else 0.0,
        "exact_match": int(is_greedy[gold]),
    }


def test_multiple_choice_picks_the_option_the_model_finds_most_likely(
    stand_in, model_dir, records_file
):
    docs = _docs(records_file)[:3]
    lm = stand_in(pretrained=str(model_dir), batch_size=3, progress=False)
    lm.task_dict = {"charts": {"val": dict(enumerate(docs))}}
    model, processor, tok = lm.model, lm.processor, lm.tokenizer
    # Options that are one token each after lmms-eval's target_delimiter " ", so that "most
    # likely" is plain: the highest next-token probability.
    single = {}
    for i in range(len(tok)):
        text = tok.decode([i])
        if (
            len(text) > 1
            and text[0] == " "
            and tok(text, add_special_tokens=False)["input_ids"] == [i]
        ):
            single[i] = text[1:]
    assert len(single) >= 20
    for doc_id, doc in enumerate(docs):
        prompt = prompt_ids(processor, [{"role": "user", "content": "<image>\n" + doc["question"]}])
        with torch.no_grad():
            logits = (
                model(
                    input_ids=torch.tensor([prompt]),
                    pixel_values=processor.preprocess_images([doc["image"]]),
                )
                .logits[0, -1]
                .float()
            )
        logp = torch.log_softmax(logits, -1)
        ranked = sorted(single, key=lambda t: -float(logp[t]))
        picks = [ranked[len(ranked) // 2], ranked[-1], ranked[0], ranked[len(ranked) // 4]]
        choices = [single[t] for t in picks]
        gold = 2  # the most likely option
        # The requests lmms-eval's ConfigurableTask.construct_requests builds (task.py 1526-1547).
        requests = [
            _request(
                "loglikelihood",
                doc_id,
                (doc["question"], f" {c}", _doc_to_visual, doc_id, "charts", "val"),
            )
            for c in choices
        ]
        results = lm.loglikelihood(requests)
        assert [r[0] for r in results] == pytest.approx([-float(logp[t]) for t in picks], abs=1e-4)
        assert [r[1] for r in results] == [t == int(logits.argmax()) for t in picks]
        scored = lmms_eval_multiple_choice(results, choices, gold)
        assert scored["pred"] == gold and scored["acc"] == 1.0
        # Summed log-probabilities (what this plugin returned before) would pick the least likely.
        assert (
            lmms_eval_multiple_choice([(-loss, g) for loss, g in results], choices, gold)["pred"]
            == 1
        )


def test_options_from_task_generation_kwargs():
    opts = plugin.PolyVisLMMsBase._options(
        {"until": "###", "temperature": 0.7, "top_p": 0.9, "num_beams": 2, "max_new_tokens": 9}, 128
    )
    assert opts == {
        "max_new_tokens": 9,
        "num_beams": 2,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["###"],
    }
    greedy = plugin.PolyVisLMMsBase._options({"temperature": 0, "top_p": 0.9}, 16)
    assert greedy == {
        "max_new_tokens": 16,
        "num_beams": 1,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "stop": [],
    }


def test_errors(stand_in, model_dir):
    with pytest.raises(ConfigError, match="model_args: unknown argument.*conv_template"):
        stand_in(pretrained=str(model_dir), conv_template="vicuna")
    lm = stand_in(pretrained=str(model_dir), progress=False)
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        lm.generate_until_multi_round([])
    lm.task_dict = {"vid": {"test": {0: {"video": "clip.mp4"}}}}
    req = _request(
        "generate_until", 0, ("what happens?", {}, lambda d: [d["video"]], 0, "vid", "test")
    )
    with pytest.raises(DataError, match="vid doc 0: visual of type str"):
        lm.generate_until([req])
