"""`polyvis chat MODEL --image PATH ["question"]`: one answer, or an interactive conversation."""

from __future__ import annotations

import argparse
import sys

from polyvis.cli._model_args import add_device_options, load_cli_model, require_at_least_one
from polyvis.data.boxes import BOX_FORMATS

HELP = """commands: /image PATH  switch images (starts a new conversation)
          /reset       forget the conversation, keep the image
          /quit        leave (also /exit or end of input)"""


class _IntermixedParser(argparse.ArgumentParser):
    """Lets the question come after options (`chat MODEL --image X "question"`): plain argparse
    binds every positional in the first run of them, leaving a later question unrecognised."""

    _busy = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._busy:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="ask a model about an image (one question, or an interactive session)",
        description="With a question: print one answer and exit. Without: an interactive session "
        "that keeps the conversation; tokens are printed as they are generated.\n\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = _IntermixedParser
    p.add_argument("model", help="polyvis model directory, or a run directory (its final/)")
    p.add_argument("question", nargs="?", help="ask this one question and exit")
    p.add_argument("--image", help="image file to talk about")
    p.add_argument("--system", help="system prompt (before the conversation)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="with --sample (default 1.0)")
    p.add_argument("--top-p", type=float, default=None, help="with --sample (default 1.0)")
    p.add_argument("--beams", type=int, default=1, help="beam search width (no streaming)")
    p.add_argument("--seed", type=int, default=None, help="random seed for --sample")
    p.add_argument(
        "--draw-boxes",
        metavar="OUT.png",
        help="write the image with the answer's boxes [x1, y1, x2, y2] drawn on it (rewritten "
        "after each answer)",
    )
    p.add_argument(
        "--box-format",
        choices=BOX_FORMATS,
        default="pixels",  # a chat has no record to say so: the model's answers are taken as pixels
        help="how --draw-boxes reads the answer's boxes: image pixels, or 0-1000 of its "
        "width/height (for models trained on norm1000 data; default: pixels)",
    )
    add_device_options(p)
    p.set_defaults(func=run)


def _gen_options(args: argparse.Namespace) -> dict:
    from polyvis.errors import ConfigError

    require_at_least_one({"--max-new-tokens": args.max_new_tokens, "--beams": args.beams})
    if not args.sample and (args.temperature is not None or args.top_p is not None):
        raise ConfigError("--temperature/--top-p", "only apply with --sample")
    return {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_beams": args.beams,
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from polyvis.errors import ConfigError
    from polyvis.serve.chat import ChatSession, as_image

    gen = _gen_options(args)
    if args.draw_boxes and not args.image:
        raise ConfigError("--draw-boxes", "needs --image (the boxes are drawn on it)")
    if args.box_format != "pixels" and not args.draw_boxes:  # it does not tell the model
        raise ConfigError("--box-format", "only applies with --draw-boxes (how it reads boxes)")
    image = as_image(args.image) if args.image else None  # a bad file fails before the model loads
    model, processor = load_cli_model(args)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    session = ChatSession(model, processor, image=image, system=args.system, gen=gen)
    if args.question is not None:
        reply = session.ask(args.question)
        print(reply)
        save_boxes(session.image, reply, args.draw_boxes, args.box_format)
        return 0
    return interactive(session, args.beams == 1, args.draw_boxes, args.box_format)


def save_boxes(image, reply: str, out: str | None, box_format: str = "pixels") -> None:
    """With --draw-boxes: the image with the reply's boxes drawn, written to `out` (a note on
    stderr says how many). box_format: how the reply writes them (norm1000: of the image size)."""
    if not out or image is None:
        return
    from polyvis.data.boxes import boxes_to_pixels, draw_boxes, parse_boxes
    from polyvis.paths import atomic_file

    boxes = parse_boxes(reply)
    with atomic_file(out) as tmp:
        shown = draw_boxes(image, boxes_to_pixels(boxes, box_format, image.size))
        shown.save(tmp, format=_image_format(out))
    print(f"({len(boxes)} box(es) drawn on {out})", file=sys.stderr)


def _image_format(path: str) -> str:
    from PIL import Image

    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return Image.registered_extensions().get(f".{ext}", "PNG")


def interactive(
    session, stream: bool, draw_boxes: str | None = None, box_format: str = "pixels"
) -> int:
    """Read questions and commands from stdin until /quit or end of input."""
    from transformers import TextStreamer

    from polyvis.errors import DataError

    streamer = TextStreamer(session.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                return 0
            if cmd == "/reset":
                session.reset()
                print("(conversation reset)")
            elif cmd == "/image" and rest.strip():
                try:
                    session.set_image(rest.strip())
                except DataError as err:
                    print(f"error: {err}", file=sys.stderr)
                    continue
                print(f"(image {rest.strip()}; new conversation)")
            else:
                print(HELP)
            continue
        try:
            if stream:
                reply = session.ask(line, streamer=streamer)  # the streamer prints it and a newline
            else:
                reply = session.ask(line)
                print(reply)
        except DataError as err:  # e.g. past the LM's context: the session goes on
            print(f"error: {err}", file=sys.stderr)
            continue
        save_boxes(session.image, reply, draw_boxes, box_format)
