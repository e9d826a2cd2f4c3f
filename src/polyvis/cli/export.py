"""`polyvis export-llava MODEL --out DIR`, `polyvis import omnifusion SRC --out DIR`."""

from __future__ import annotations

import argparse

from polyvis.cli._model_args import DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-llava",
        help="write a one-encoder model as a transformers LLaVA checkpoint",
        description="Save MODEL as LlavaForConditionalGeneration + LlavaProcessor in DIR (loadable "
        "with transformers' from_pretrained and LLaVA serving engines). Needs one encoder, the "
        "identity fusion (concat-channel) and an mlp (depth 2) or linear adapter.",
    )
    p.add_argument("model", help="polyvis model directory, or a run directory (its final/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: the model's own")
    p.set_defaults(func=cmd_export_llava)

    p = sub.add_parser("import", help="convert another project's checkpoint into a polyvis model")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = formats.add_parser(
        "omnifusion",
        help="an OmniFusion 1.x checkpoint (tuned LM, CLIP, projection.pt, special_embeddings.pt)",
        description="Convert an OmniFusion checkpoint folder SRC into a polyvis model directory. "
        "SRC holds tuned-model/ (the LM), tokenizer/ (else the LM's), projection.pt and "
        "special_embeddings.pt; the CLIP tower is --encoder (default SRC/clip).",
    )
    q.add_argument("src", help="OmniFusion checkpoint folder")
    q.add_argument("--out", required=True, help="output polyvis model directory")
    q.add_argument("--llm", help="the tuned causal LM directory (default SRC/tuned-model)")
    q.add_argument("--tokenizer", help="tokenizer directory (default SRC/tokenizer, else the LM's)")
    q.add_argument(
        "--encoder", help="CLIPVisionModel / CLIPModel directory or hub id (default SRC/clip)"
    )
    q.add_argument("--projection", help="adapter weights (default SRC/projection.pt)")
    q.add_argument("--special", help="special embeddings (default SRC/special_embeddings.pt)")
    q.add_argument("--heads", type=int, default=4, help="attention heads of the adapter layer (4)")
    q.add_argument("--prompt", default=None, help="default system prompt of the chat template")
    q.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    q.set_defaults(func=cmd_import_omnifusion)


def cmd_export_llava(args: argparse.Namespace) -> int:
    from polyvis.cli._model_args import resolve_model_dir
    from polyvis.export.llava import export_llava

    out = export_llava(resolve_model_dir(args.model), args.out, dtype=args.dtype)
    print(f"wrote LLaVA checkpoint and processor to {out}")
    return 0


def cmd_import_omnifusion(args: argparse.Namespace) -> int:
    from polyvis.export.omnifusion import DEFAULT_PROMPT, import_omnifusion

    out = import_omnifusion(
        args.src,
        args.out,
        llm=args.llm,
        tokenizer=args.tokenizer,
        encoder=args.encoder,
        projection=args.projection,
        special=args.special,
        heads=args.heads,
        prompt=DEFAULT_PROMPT if args.prompt is None else args.prompt,
        dtype=args.dtype,
    )
    print(f"wrote polyvis model to {out}")
    return 0
