"""Continuous batching: requests join a running batch at the next step and leave when done, and
every row's tokens equal the same request's alone (DecodeBatch directly, then the Batcher)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from _serve_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    WORDS,
    answer_alone,
    noise,
    reference_fixture,
    sharp_model_dir_fixture,
)
from polyvis.models.build import load_model
from polyvis.serve.batcher import Batcher, Delta, Failed, Finished, GenerationParams, Started
from polyvis.serve.decode_batch import DecodeBatch, choose_tokens, next_tokens, warp

LONG_TEXT = "square square square"  # its greedy answer runs past 64 tokens without EOS


@pytest.fixture(scope="module")
def served(sharp_model_dir):
    """The sharp model in a running batcher (its own copy: `reference` answers alone)."""
    model, proc = load_model(sharp_model_dir)
    batcher = Batcher(model, proc, max_batch=8, window_ms=1, max_tokens_limit=64).start()
    yield batcher
    batcher.stop()


def prompt_of(proc, text: str, n_images: int) -> str:
    content = "\n".join(["<image>"] * n_images + [text])
    return proc.apply_chat_template([{"role": "user", "content": content}])


def case(i: int) -> tuple[str, list, int]:
    """Prompts of different lengths, with zero to two images and different max_tokens."""
    text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (3 * i) % 7))
    images = [noise(100 * i + j, 16 + 7 * j + i, 20 + i) for j in range(i % 3)]
    return text, images, 2 + (5 * i) % 11


class Log:
    """Every job's events in one ordered list: (name, event)."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def sink(self, name: str, then=None):
        def put(event):
            with self.lock:
                self.events.append((name, event))
            if then is not None:
                then(event)

        return put

    def of(self, name: str) -> list:
        with self.lock:
            return [e for n, e in self.events if n == name]

    def finished(self, name: str) -> Finished | None:
        done = [e for e in self.of(name) if isinstance(e, (Finished, Failed))]
        return done[0] if done else None

    def text(self, name: str) -> str:
        return "".join(e.text for e in self.of(name) if isinstance(e, Delta))

    def wait(self, *names: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.finished(n) for n in names):
            assert time.monotonic() < deadline, f"no end event for {names}"
            time.sleep(0.005)


def test_decode_batch_rows_join_and_leave_with_the_tokens_of_each_alone(reference):
    model, proc = reference
    items = []
    for i in range(6):
        text, images, max_tokens = case(i)
        prompt = prompt_of(proc, text, len(images))
        pixels = proc.preprocess_images(images) if images else None
        ids = proc.tokenizer(proc.expand_image_tokens(prompt))["input_ids"]
        items.append((ids, pixels, max_tokens))
    items[3] = (items[3][0] * 9, None, 9)  # a newcomer longer than the running batch (no images)
    expected = []
    for ids, pixels, max_tokens in items:
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pixel_values=pixels,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=None,
            )
        expected.append(out[0, len(ids) :].tolist())
    assert len({tuple(e) for e in expected}) == len(expected)  # the answers really differ

    got: dict[int, list[int]] = {i: [] for i in range(len(items))}

    def prefill(indices: list[int]) -> DecodeBatch:
        pixels = [items[i][1] for i in indices if items[i][1] is not None]
        new, logits = DecodeBatch.prefill(
            model,
            [items[i][0] for i in indices],
            torch.cat(pixels) if pixels else None,
            proc.tokenizer.pad_token_id,
            list(indices),
        )
        choose(new, logits)
        return new

    def choose(batch: DecodeBatch, logits: torch.Tensor) -> None:
        n = len(batch)
        for i, token in zip(batch.rows, next_tokens(logits, [0.0] * n, [1.0] * n, [None] * n)):
            got[i].append(token)
        keep = [k for k, i in enumerate(batch.rows) if len(got[i]) < items[i][2]]
        batch.keep(keep)

    def step(batch: DecodeBatch) -> None:
        tokens = torch.tensor([got[i][-1] for i in batch.rows])
        choose(batch, batch.step(model, tokens))

    batch = prefill([0, 1, 2])  # three prompts of different lengths, images on two
    step(batch)
    step(batch)
    batch.merge(prefill([3, 4]))  # joins mid-way: one of them longer than the batch so far
    step(batch)
    batch.merge(prefill([5]))
    shapes = []
    while len(batch):
        shapes.append((len(batch), batch.length))
        for layer in batch.cache.layers:  # a cache row per live row, a column per mask column
            assert layer.keys.shape[0] == layer.values.shape[0] == len(batch)
            assert layer.keys.shape[2] == batch.mask.shape[1] == batch.length
        step(batch)
    assert [got[i] for i in range(len(items))] == expected
    assert max(n for n, _ in shapes) == 5  # rows of three prefills decoded together
    # the newcomer longer than the batch padded the batch, and columns that are padding in
    # every live row went when the rows that needed them left
    assert max(t for _, t in shapes) > len(items[3][0]) > len(items[2][0]) + 3
    assert shapes[-1][1] < max(t for _, t in shapes) - 50


def test_sampling_follows_each_rows_settings_and_seed():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 50, generator=g) * 3
    for temperature, top_p in [(0.7, 0.9), (1.5, 0.3), (1.0, 1.0), (0.2, 0.01)]:
        ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits[:1]))
        assert torch.equal(warp(logits[0], temperature, top_p), ref[0])
    # a seeded row draws the same tokens whether it decodes alone or beside unseeded rows
    alone, beside = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    solo = [next_tokens(logits[2:3], [1.0], [0.9], [alone])[0] for _ in range(40)]
    mixed = [
        next_tokens(logits[:3], [0.0, 1.0, 1.0], [1.0, 1.0, 0.9], [None, None, beside])
        for _ in range(40)
    ]
    assert [m[2] for m in mixed] == solo and len(set(solo)) > 1
    assert {m[0] for m in mixed} == {int(logits[0].argmax())}  # the greedy row


def test_a_temperature_too_small_to_divide_by_samples_its_limit_the_top_token():
    logits = torch.tensor([[0.5, 3.0, -2.0, 1.0], [-7.0, -9.0, -8.0, -7.5]])
    for row in logits:
        probs = warp(row, 1e-40, 1.0).softmax(-1)  # logits / 1e-40 overflows to +-inf
        assert torch.equal(probs, torch.nn.functional.one_hot(row.argmax(), 4).float())
        assert torch.isfinite(warp(row, 1e-40, 0.5).softmax(-1)).all()
    assert next_tokens(logits, [1e-40, 1e-45], [1.0, 0.9], [None, None]) == [1, 0]
    # an ordinary temperature keeps transformers' arithmetic exactly (the test above)
    assert torch.equal(warp(logits[0], 0.7, 1.0), logits[0] / 0.7)


def test_a_row_whose_own_draw_fails_fails_alone_and_the_others_take_their_tokens():
    class Row:
        def __init__(self, temperature: float, generator=None):
            self.temperature, self.top_p, self.generator = temperature, 1.0, generator
            self.token, self.error = None, None

        def feed(self, token: int) -> None:
            self.token = token

        def fail(self, err: Exception) -> None:
            self.error = err

    class Broken:  # a generator the draw refuses
        def get_state(self):
            return None

    logits = torch.tensor([[0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [5.0, 1.0, 2.0], [0.1, 0.2, 0.3]])
    seeded = [torch.Generator().manual_seed(7) for _ in range(2)]
    rows = [Row(0.0), Row(1.0, seeded[0]), Row(1.0, Broken()), Row(1e-40)]
    choose_tokens(rows, logits)
    assert rows[2].error is not None and [r.error for r in rows[:2] + rows[3:]] == [None] * 3
    assert [rows[0].token, rows[2].token, rows[3].token] == [1, None, 2]
    # the seeded row drew what it draws alone, though the failed first pass had drawn for it
    assert rows[1].token == next_tokens(logits[1:2], [1.0], [1.0], [seeded[1]])[0]
    assert seeded[0].get_state().equal(seeded[1].get_state())


def test_a_short_request_joins_a_running_long_one_and_finishes_first(served, reference):
    model, proc = reference
    log, joined = Log(), threading.Event()
    short_text, short_max = "describe the picture", 3

    def on_long(event):
        if isinstance(event, Delta) and not joined.is_set():
            joined.set()  # the long one is decoding: the short one arrives now
            served.submit(
                prompt_of(proc, short_text, 0),
                None,
                GenerationParams(max_tokens=short_max),
                log.sink("short"),
            )

    before = dict(served.stats)
    served.submit(
        prompt_of(proc, LONG_TEXT, 0),
        None,
        GenerationParams(max_tokens=64, stop=("\x00never",)),
        log.sink("long", on_long),
    )
    log.wait("long", "short")
    ends = [n for n, e in log.events if isinstance(e, Finished)]
    assert ends == ["short", "long"]  # the short one left while the long one went on
    long_done, short_done = log.finished("long"), log.finished("short")
    assert (long_done.finish_reason, long_done.completion_tokens) == ("length", 64)
    assert short_done.completion_tokens == short_max
    # it joined the running batch (two prefills, two rows at once), not a batch after it
    assert served.stats["batches"] - before["batches"] == 2
    assert served.stats["max_batch_seen"] >= 2
    long_deltas_before_short_end = 0
    for name, event in log.events:
        if name == "short" and isinstance(event, Finished):
            break
        long_deltas_before_short_end += name == "long" and isinstance(event, Delta)
    assert long_deltas_before_short_end < 20
    # and each got its answer alone
    assert log.text("long") == answer_alone(reference, LONG_TEXT, [], 64)[0]
    assert log.text("short") == answer_alone(reference, short_text, [], short_max)[0]


def test_a_mixed_batch_with_joins_answers_each_request_as_alone(served, reference):
    model, proc = reference
    cases = [case(i) for i in range(10)]
    log, later = Log(), threading.Event()

    def submit(i: int) -> None:
        text, images, max_tokens = cases[i]
        served.submit(
            prompt_of(proc, text, len(images)),
            images,
            GenerationParams(max_tokens=max_tokens),
            log.sink(str(i), then if i == 0 else None),
        )

    def then(event):  # once request 0 decodes, the second half arrives
        if isinstance(event, Delta) and not later.is_set():
            later.set()
            for i in range(5, 10):
                submit(i)

    for i in range(5):
        submit(i)
    names = [str(i) for i in range(10)]
    log.wait(*names)
    expected = [answer_alone(reference, t, ims, m) for t, ims, m in cases]
    got = [(log.text(n), log.finished(n).finish_reason) for n in names]
    assert got == [(text, reason) for text, reason, _ in expected]
    assert [log.of(n)[0].prompt_tokens for n in names] == [n for _, _, n in expected]
    # the second half started while the first half was still decoding
    order = [(n, type(e)) for n, e in log.events]
    last_end = max(order.index((n, Finished)) for n in names[:5])
    assert min(order.index((n, Started)) for n in names[5:]) < last_end
    assert len({text for text, _, _ in expected}) > 7


def test_stop_strings_and_max_tokens_hold_per_row_and_streams_add_up(served, reference):
    model, proc = reference
    texts = ["how many objects", "describe the picture red", "blue square", LONG_TEXT]
    full = [answer_alone(reference, t, [], 12)[0] for t in texts]
    stops = [(full[0][3:5],), (full[1][4:6], "\x00never"), (), ()]
    limits = [12, 12, 5, 12]
    log = Log()
    for i, (t, s, m) in enumerate(zip(texts, stops, limits)):
        served.submit(
            prompt_of(proc, t, 0), None, GenerationParams(max_tokens=m, stop=s), log.sink(str(i))
        )
    log.wait("0", "1", "2", "3")
    assert log.text("0") == full[0][: full[0].index(stops[0][0])]
    assert log.text("1") == full[1][: full[1].index(stops[1][0])]
    assert log.text("2") == answer_alone(reference, texts[2], [], 5)[0]
    assert log.text("3") == full[3]
    reasons = [log.finished(str(i)).finish_reason for i in range(4)]
    assert reasons == ["stop", "stop", "length", "length"]
    assert log.finished("2").completion_tokens == 5
    deltas = [e for e in log.of("3") if isinstance(e, Delta)]
    assert len(deltas) > 1 and "".join(d.text for d in deltas) == full[3]  # streamed in pieces


def test_a_cancelled_row_leaves_without_disturbing_the_others(served, reference):
    model, proc = reference
    log, jobs, ready = Log(), {}, threading.Event()
    before = served.stats["cancelled"]

    def cancel_after_two(event):
        if isinstance(event, Delta) and len(log.of("gone")) == 3:  # Started + two deltas
            ready.wait(30)
            jobs["gone"].cancel()  # from inside the step, so the timing is exact

    texts = {"a": "how many objects", "gone": LONG_TEXT, "b": "describe the picture"}
    for name, text in texts.items():
        then = cancel_after_two if name == "gone" else None
        jobs[name] = served.submit(
            prompt_of(proc, text, 0),
            None,
            GenerationParams(max_tokens=20, stop=("\x00never",)),
            log.sink(name, then),
        )
    ready.set()
    log.wait("a", "gone", "b")
    gone = log.finished("gone")
    assert gone.finish_reason == "cancelled" and gone.completion_tokens == 2
    assert [type(e) for e in log.of("gone")] == [Started, Delta, Delta, Finished]
    for name in ("a", "b"):
        text, reason, _ = answer_alone(reference, texts[name], [], 20)
        assert (log.text(name), log.finished(name).finish_reason) == (text, reason)
    assert served.stats["cancelled"] == before + 1


def test_a_failing_request_fails_alone_and_the_batch_goes_on(served, reference):
    model, proc = reference
    log = Log()
    good = prompt_of(proc, "blue square", 0)
    # Pixels with a wrong slot count pass submit's checks but fail in the prefill's encoders.
    broken = torch.zeros(1, 3, 3, 8, 8)

    def arrive_together(event):  # both arrive while the long one decodes: one prefill group
        if isinstance(event, Started):
            return
        if len(log.of("long")) == 2:
            served.submit(
                prompt_of(proc, "what", 1), broken, GenerationParams(max_tokens=4), log.sink("bad")
            )
            served.submit(good, None, GenerationParams(max_tokens=4), log.sink("good"))

    served.submit(
        prompt_of(proc, LONG_TEXT, 0),
        None,
        GenerationParams(max_tokens=30, stop=("\x00never",)),
        log.sink("long", arrive_together),
    )
    log.wait("long", "bad", "good")
    assert isinstance(log.finished("bad"), Failed)
    assert "pixel_values must be" in str(log.finished("bad").error)
    assert log.text("good") == answer_alone(reference, "blue square", [], 4)[0]
    assert log.text("long") == answer_alone(reference, LONG_TEXT, [], 30)[0]
    assert served.generate(good, params=GenerationParams(max_tokens=2)).completion_tokens == 2


def test_a_sliding_window_lm_answers_as_generate_does_past_its_window(tmp_path):
    """Mistral's sliding window (16 here: the answers run past it) is the model's own mask:
    the batch keeps full cache layers and each row still equals generate alone."""
    from conftest import NANO_TINY
    from polyvis.config import load_config
    from polyvis.models.build import build_model

    mistral = ("model.llm.config={model_type: mistral, hidden_size: 64, intermediate_size: 128, "
               "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
               "sliding_window: 16, max_position_embeddings: 512, tie_word_embeddings: true}")  # fmt: skip
    torch.manual_seed(0)
    model, proc = build_model(load_config(NANO_TINY, [mistral]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.eval()
    assert model.config.get_text_config(decoder=True).sliding_window == 16
    prompts = [proc.tokenizer(prompt_of(proc, w, 0))["input_ids"] for w in WORDS[:3]]
    prompts[1] = prompts[1] * 2  # rows of different lengths, left-padded
    expected = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=24,
                                 do_sample=False, eos_token_id=None)  # fmt: skip
        expected.append(out[0, len(ids) :].tolist())
    assert len({tuple(e) for e in expected}) == len(expected)
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def choose(batch: DecodeBatch, logits: torch.Tensor) -> torch.Tensor:
        n = len(batch.rows)
        for row, t in zip(batch.rows, next_tokens(logits, [0.0] * n, [1.0] * n, [None] * n)):
            got[row].append(t)
        return torch.tensor([got[row][-1] for row in batch.rows])

    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        batch, logits = DecodeBatch.prefill(model, prompts[:2], None, pad, [0, 1])
        last = choose(batch, logits)
        for step in range(30):
            if step == 4:  # row 2 joins the running batch, past the window already
                new, new_logits = DecodeBatch.prefill(model, prompts[2:], None, pad, [2])
                choose(new, new_logits)
                batch.merge(new)
                last = torch.tensor([got[row][-1] for row in batch.rows])
            done = [i for i, row in enumerate(batch.rows) if len(got[row]) == 24]
            if done:
                batch.keep([i for i in range(len(batch.rows)) if i not in done])
                last = torch.tensor([got[row][-1] for row in batch.rows])
            if not batch.rows:
                break
            last = choose(batch, batch.step(model, last))
    assert [got[i] for i in range(3)] == expected
