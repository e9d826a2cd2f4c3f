"""The lmms-eval plugin: run lmms-eval's benchmarks (TextVQA, ChartQA, DocVQA, OCRBench, ...) on a
polyvis model directory.

    python -m lmms_eval --model polyvis --model_args pretrained=DIR --tasks textvqa_val,chartqa

lmms-eval is not a polyvis dependency (it pulls in torchvision, wandb, sentence-transformers, ...),
so it is imported only when the model class is first used: `PolyVisLMMs` is built on first access
as a subclass of `lmms_eval.api.model.lmms`, and importing this module never needs lmms-eval.
lmms-eval finds the model through the entry point group "lmms_eval.models", whose payload is
`lmms_eval_manifest` (a callable returning a `ModelManifest`).

Prompts are built as everywhere else in polyvis (`polyvis.data.template.prompt_ids`): the task's
context becomes one user turn, with one `<image>` marker per visual in front of it unless the
context already holds as many markers, through the chat template; so an lmms-eval answer equals
`polyvis eval`'s answer to the same question and image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from PIL import Image

from polyvis.data.records import IMAGE_TOKEN
from polyvis.data.template import for_images, prompt_ids
from polyvis.errors import ConfigError, DataError
from polyvis.eval.generation import generate_batch, score_continuations
from polyvis.models.rgb import as_rgb
from polyvis.progress import progress_bar

# PolyVisLMMs is left out: `import *` must not need lmms-eval.
__all__ = ["MODEL_ID", "PolyVisLMMsBase", "lmms_eval_manifest"]

MODEL_ID = "polyvis"
CLASS_PATH = "polyvis.eval.lmms.PolyVisLMMs"
DEFAULT_MAX_NEW_TOKENS = 128


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class PolyVisLMMsBase:
    """Everything the lmms-eval model does, without lmms-eval (the plugin class adds its base).

    pretrained: a polyvis model directory. batch_size: requests per forward / generate call.
    max_new_tokens: used when a task's generation_kwargs do not set it. device: "cpu", "cuda",
    "cuda:1", ...; dtype: float32 / bfloat16 / float16 (default: as saved).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str | None = "cpu",
        dtype: str | None = None,
        max_batch_size: int | None = None,  # lmms-eval passes it; batches are fixed-size here
        progress: bool = True,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                "model_args",
                f"unknown argument(s) {', '.join(sorted(unknown))}; valid: pretrained, batch_size, "
                "max_new_tokens, device, dtype",
            )
        from polyvis.models.build import load_model

        # lmms-eval's --batch_size may be "auto"; polyvis batches are one fixed size.
        size = 1 if str(batch_size).startswith("auto") else int(batch_size)
        if size < 1:
            raise ConfigError("model_args.batch_size", f"must be at least 1, got {batch_size}")
        if int(max_new_tokens) < 1:
            raise ConfigError(
                "model_args.max_new_tokens", f"must be at least 1, got {max_new_tokens}"
            )
        self.pretrained = str(pretrained)
        self._batch_size = size
        self.max_new_tokens = int(max_new_tokens)
        self.progress = bool(progress)
        self._model, self._processor = load_model(pretrained, dtype=dtype, device=device or "cpu")
        if not hasattr(self, "task_dict"):  # lmms.__init__ sets these when it runs first
            self.task_dict: dict[str, Any] = {}

    # -- what lmms-eval reads (read-only) --------------------------------------------------------
    model = property(attrgetter("_model"))
    processor = property(attrgetter("_processor"))
    tokenizer = property(attrgetter("_processor.tokenizer"))
    batch_size = property(attrgetter("_batch_size"))
    device = property(attrgetter("_model.device"))

    # -- prompts ----------------------------------------------------------------------------------
    def _visuals(self, doc_to_visual: Callable | None, doc_id: Any, task: str, split: str) -> list:
        if doc_to_visual is None:
            return []
        visuals = _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
        for v in visuals:
            if not isinstance(v, Image.Image):
                raise DataError(
                    f"{task} doc {doc_id}: visual of type {type(v).__name__}; polyvis takes images "
                    "only (no video or audio)"
                )
        return [as_rgb(v) for v in visuals]  # as training decodes them: alpha on white

    def _prompt(self, context: str, images: list[Image.Image], where: str) -> list[int]:
        markers = context.count(IMAGE_TOKEN)
        if markers == 0 and images:
            context = "\n".join([IMAGE_TOKEN] * len(images) + [context])
        elif markers != len(images):
            raise DataError(
                f"{where}: {markers} {IMAGE_TOKEN} marker(s) but {len(images)} image(s)"
            )
        messages = [{"role": "user", "content": context}]
        return prompt_ids(for_images(self._processor, images), messages)

    def _bar(self, total: int, what: str):
        enabled = self.progress and getattr(self, "rank", 0) == 0
        bar = progress_bar(enabled, label=f"polyvis {what}", eta=False, elapsed=False)
        return bar, bar.add_task(what, total=total)

    # -- requests ---------------------------------------------------------------------------------
    @staticmethod
    def _options(gen_kwargs: dict[str, Any] | None, default_max: int) -> dict[str, Any]:
        """A task's generation_kwargs as generate_batch options."""
        gen = dict(gen_kwargs or {})
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen.get("temperature") or 0.0)
        do_sample = bool(gen.get("do_sample", False)) or temperature > 0
        return {
            "max_new_tokens": int(gen.get("max_new_tokens") or default_max),
            "num_beams": int(gen.get("num_beams") or 1),
            "do_sample": do_sample,
            "temperature": temperature if do_sample and temperature > 0 else None,
            "top_p": (float(gen["top_p"]) if do_sample and gen.get("top_p") else None),
            "stop": until,
        }

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """One answer per request; `.args` = (context, gen_kwargs, doc_to_visual, doc_id, task,
        split). Honours gen_kwargs until / max_new_tokens / temperature / top_p / num_beams."""
        prepared, groups = [], {}
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            images = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self._prompt(context, images, f"{task} doc {doc_id}")
            options = self._options(gen_kwargs, self.max_new_tokens)
            prepared.append((prompt, images, options, context, gen_kwargs))
            # Requests with the same options share batches.
            groups.setdefault(json.dumps(options, sort_keys=True), []).append(i)
        answers: list[str] = [""] * len(requests)
        bar, task_id = self._bar(len(requests), "generate")
        with bar:
            for indices in groups.values():
                for chunk in _chunks(indices, self._batch_size):
                    outs = generate_batch(
                        self._model,
                        self._processor,
                        [prepared[i][0] for i in chunk],
                        [prepared[i][1] for i in chunk],
                        **prepared[chunk[0]][2],
                    )
                    for i, text in zip(chunk, outs):
                        answers[i] = text
                        hook = getattr(self, "cache_hook", None)
                        if hook is not None:
                            hook.add_partial(
                                "generate_until", (prepared[i][3], prepared[i][4]), text
                            )
                    bar.update(task_id, advance=len(chunk))
        return answers

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(mean loss of the continuation's tokens, is_greedy) per request; `.args` = (context,
        continuation or doc_to_target, doc_to_visual, doc_id, task, split), or (context,
        continuation) for lmms-eval's unconditional requests.

        The first value is -(sum of log p(token | before)) / number of tokens: lmms-eval's own
        LLaVA models return this (the LM's mean cross-entropy), and its multiple-choice scoring
        picks the option with the smallest value (argmin). An empty continuation gives 0.0.
        """
        prompts, conts, images = [], [], []
        for req in requests:
            args = req.args
            if len(args) == 2:
                context, target, visuals, where = args[0], args[1], [], "request"
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                where = f"{task} doc {doc_id}"
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                if not isinstance(target, str):
                    target = target(self.task_dict[task][split][doc_id])
            prompts.append(self._prompt(context, visuals, where))
            conts.append(self.tokenizer(str(target), add_special_tokens=False)["input_ids"])
            images.append(visuals)
        results: list[tuple[float, bool]] = []
        bar, task_id = self._bar(len(requests), "loglikelihood")
        with bar:
            for chunk in _chunks(list(range(len(requests))), self._batch_size):
                scored = score_continuations(
                    self._model,
                    self._processor,
                    [prompts[i] for i in chunk],
                    [conts[i] for i in chunk],
                    [images[i] for i in chunk],
                )
                for i, (logp, greedy) in zip(chunk, scored):
                    results.append((-logp / len(conts[i]) if conts[i] else 0.0, greedy))
                bar.update(task_id, advance=len(chunk))
        return results

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(
            "polyvis does not implement generate_until_multi_round; run tasks whose output_type "
            "is generate_until or loglikelihood"
        )


_CLASS: type | None = None


def _lmms_class() -> type:
    """PolyVisLMMs: PolyVisLMMsBase on top of lmms-eval's `lmms` base class (imported now)."""
    global _CLASS
    if _CLASS is None:
        try:
            from lmms_eval.api.model import lmms
        except ImportError as err:
            raise ImportError(
                f"polyvis.eval.lmms.PolyVisLMMs needs lmms-eval (pip install lmms-eval): {err}"
            ) from err

        class PolyVisLMMs(PolyVisLMMsBase, lmms):
            """A polyvis model directory as an lmms-eval model (`--model polyvis`)."""

            is_simple = True

            def __init__(self, pretrained: str, **kwargs: Any) -> None:
                lmms.__init__(self)
                PolyVisLMMsBase.__init__(self, pretrained, **kwargs)

        PolyVisLMMs.__module__ = __name__
        _CLASS = PolyVisLMMs
    return _CLASS


def __getattr__(name: str) -> Any:
    if name == "PolyVisLMMs":
        return _lmms_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lmms_eval_manifest() -> Any:
    """The entry point payload of group "lmms_eval.models": model id "polyvis" -> PolyVisLMMs."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
