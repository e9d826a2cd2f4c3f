"""The cost of tiling per image: image features and a prefill forward against the number of tiles.

One CLIP-like encoder (concat-channel, 2-layer MLP adapter, a small Qwen2 LM), untiled and tiled
with a single grid each (1x1, 1x2, 2x2, 2x3, 3x3; with and without a thumbnail), on images whose
size picks that grid. For each: the visual tokens per image, the median time of the image
features (encoder passes + fusion + adapter) and of one forward over a prompt holding the image
(what generation's prefill costs), and both relative to the untiled model. The encoder part should
grow in proportion to the views (thumbnail + tiles); the prefill also pays the LM for the longer
sequence. A least-squares line, ms = a + b x views, over the tiled rows gives the fixed
cost a and the cost b of each view. Calls are taken in turns and timed in process CPU time, which other jobs on a shared
machine hardly move (see benchmarks/bench_model.py).

`--pages`: the cost per image of the nano tiling measurement (configs/tiling-ocr-nano.yaml,
docs/tiling.md) instead: vary-nano's shape (its ResNet at 64 px, 8 x 8 tokens), concat-channel, the
2-layer MLP adapter, lm-nano's shape, on the page families' own pages (ocrpage 128 x 128,
tablepage 192 x 64), untiled against the config's tiling; with a training step (forward and
backward over the prompt and its answer, the loss on the answer, the encoder frozen as in the
runs' fine-tuning stage) beside the features and prefill.

Random weights, CPU, no download:

    .venv/bin/python benchmarks/bench_tiling.py            # prints a markdown table
    .venv/bin/python benchmarks/bench_tiling.py --quick    # fewer repetitions (smoke test)
    .venv/bin/python benchmarks/bench_tiling.py --pages    # the nano pages, tiled vs untiled
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from PIL import Image

from polyvis.config import load_config
from polyvis.models.build import build_model

IMAGE, PATCH = 224, 16  # a 14 x 14 patch grid per tile
CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": IMAGE,
    "patch_size": PATCH,
}
LLM = {
    "model_type": "qwen2",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
GRIDS = [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]


def build_single(encoder: dict, tiling: dict | None, llm: dict, vocab: int):
    """One encoder (tiled when `tiling` is given) through concat-channel and an MLP, seed 0."""
    if tiling is not None:
        encoder = {**encoder, "tiling": tiling}
    cfg = {
        "model": {
            "encoders": [encoder],
            "fusion": {"type": "concat-channel"},
            "adapter": {"type": "mlp", "depth": 2},
            "llm": {"config": llm, "tokenizer": {"vocab_size": vocab}},
        }
    }
    torch.manual_seed(0)
    return build_model(load_config(cfg))


def build(grid: tuple[int, int] | None, thumbnail: bool):
    tiling = None if grid is None else {"grids": [list(grid)], "thumbnail": thumbnail}
    return build_single({"name": "clip", "config": CLIP, "layers": [-2]}, tiling, LLM, 600)


def picture(grid: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(0)
    h, w = grid[0] * IMAGE, grid[1] * IMAGE
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


def medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds per call, the calls taken in turns (A B C A B C ...)."""
    for fn in fns.values():
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            c0 = time.process_time()
            fn()
            cpu[key].append(time.process_time() - c0)
    return {k: statistics.median(v) for k, v in cpu.items()}


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(a, b, r2) of the least-squares line y = a + b x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys)) / ss if ss else 1.0
    return a, b, r2


# configs/tiling-ocr-nano.yaml's tiling of vary-nano
PAGE_TILING = {"grids": [[1, 2], [2, 1], [2, 2], [1, 3]], "thumbnail": True}


def build_nano(tiling: dict | None):
    from polyvis.nano.vary_model import DECODER_NANO, RESNET_NANO

    encoder = {"name": "vary", "config": dict(RESNET_NANO), "layers": [-1], "image_size": 64}
    return build_single(encoder, tiling, DECODER_NANO, 300)


def pages(repeats: int, threads: int) -> None:
    """The nano measurement's cost per page: untiled against tiled, per page family."""
    from polyvis.data.synthetic import FAMILIES, item_rng

    rows, fns = {}, {}
    for tiled in (False, True):
        model, processor = build_nano(PAGE_TILING if tiled else None)
        model.set_trainable(encoders=False, projector=True, llm=True)  # the fine-tuning stage
        for family in ("ocrpage", "tablepage"):
            item = FAMILIES.get(family)().render(item_rng(0, family, "bench", 0), 64, "medium")
            question, answer = item.meta["qa"][0]["q"], item.meta["qa"][0]["a"]
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": "<image>\n" + question}]
            )
            inputs = processor(prompt, images=[item.image])
            full = processor(prompt + answer, images=[item.image])
            tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
            grid = processor.tile_grid((item.image.height, item.image.width))
            views = (1 + grid[0] * grid[1]) if grid else 1
            name = f"{family} {item.image.width}x{item.image.height} | " + (
                f"{grid[0]}x{grid[1]} + thumbnail" if grid else "untiled"
            )
            rows[name] = (views, tokens, full["input_ids"].shape[1])

            @torch.no_grad()
            def features(model=model, pv=inputs["pixel_values"]):
                model.get_image_features(pv)

            @torch.no_grad()
            def prefill(model=model, inputs=inputs):
                model(**inputs)

            labels = full["input_ids"].clone()
            labels[:, : inputs["input_ids"].shape[1]] = -100  # the loss on the answer only

            def step(model=model, full=full, labels=labels):
                model.zero_grad(set_to_none=True)
                model(**full, labels=labels).loss.backward()

            fns[f"{name}|features"], fns[f"{name}|prefill"], fns[f"{name}|step"] = (
                features,
                prefill,
                step,
            )
    times = medians(fns, repeats)
    print(f"CPU, {threads} thread(s), median of {repeats} (process CPU time); vary-nano's shape")
    print()
    print("| page | tiling | views | visual tokens | sequence | features ms | x | prefill ms | x "
          "| train step ms | x |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (views, tokens, length) in rows.items():
        page, tiling = name.split(" | ")
        cells = [f"| {page} | {tiling} | {views} | {tokens} | {length} "]
        for kind in ("features", "prefill", "step"):
            t, base = times[f"{name}|{kind}"], times[f"{page} | untiled|{kind}"]
            cells.append(f"| {t * 1e3:.1f} | {t / base:.2f} ")
        print("".join(cells) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 15")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--pages", action="store_true", help="the nano page families, vary-nano tiled vs untiled"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 15
    if args.pages:
        pages(repeats, args.threads)
        return

    cases = {"untiled": (None, False)}
    for grid in GRIDS:
        for thumb in (False, True):
            cases[f"{grid[0]}x{grid[1]}" + (" + thumbnail" if thumb else "")] = (grid, thumb)
    rows, fns = {}, {}
    for name, (grid, thumb) in cases.items():
        model, processor = build(grid, thumb)
        im = picture(grid or (1, 1))
        text = processor.apply_chat_template([{"role": "user", "content": "<image>\nRead it."}])
        inputs = processor(text, images=[im])
        tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
        views = (int(thumb) + grid[0] * grid[1]) if grid else 1
        rows[name] = (views, tokens)

        @torch.no_grad()
        def features(model=model, pv=inputs["pixel_values"]):
            model.get_image_features(pv)

        @torch.no_grad()
        def prefill(model=model, inputs=inputs):
            model(**inputs)

        fns[f"{name}|features"], fns[f"{name}|prefill"] = features, prefill
    times = medians(fns, repeats)

    base_f, base_p = times["untiled|features"], times["untiled|prefill"]
    print(f"CPU, {args.threads} thread(s), median of {repeats}; tiles of {IMAGE} px")
    print()
    print("| tiling | views | visual tokens | features ms | x untiled | per view | prefill ms "
          "| x untiled |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (views, tokens) in rows.items():
        f, p = times[f"{name}|features"], times[f"{name}|prefill"]
        print(
            f"| {name} | {views} | {tokens} | {f * 1e3:.1f} | {f / base_f:.2f} | "
            f"{f / base_f / views:.2f} | {p * 1e3:.1f} | {p / base_p:.2f} |"
        )
    tiled = [name for name in rows if name != "untiled"]
    views = [float(rows[n][0]) for n in tiled]
    a, b, r2 = line_fit(views, [times[f"{n}|features"] * 1e3 for n in tiled])
    print()
    print(f"features: ms = {a:.1f} + {b:.1f} x views (R^2 = {r2:.3f}); untiled {base_f * 1e3:.1f}")


if __name__ == "__main__":
    main()
