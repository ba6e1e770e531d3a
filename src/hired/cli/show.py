"""``hired show``: draw which patches a method keeps (:func:`hired.viz.plot_selection`)."""

from __future__ import annotations

from pathlib import Path

from hired import viz
from hired.cli.common import CommandError, command_errors, model_help
from hired.families import family_of
from hired.images import load_image
from hired.loading import DTYPES, load_model
from hired.methods.base import option_types
from hired.methods.options import assign_options, build_method, method_class, option_value, split_option

SHOW_HELP = "draw which patches a method keeps, per partition and on the original image"


def add_show_parser(subparsers) -> None:
    """Register ``hired show`` on the ``hired`` command's subparsers."""
    p = subparsers.add_parser("show", help=SHOW_HELP, description=SHOW_HELP + " (needs matplotlib).")
    p.add_argument(
        "--model",
        required=True,
        help=model_help(merged_grid=False),
    )
    p.add_argument("--image", required=True, help="image file path or http(s) URL")
    p.add_argument("--out", required=True, help="figure to write: .png (or .pdf, .svg, ...)")
    p.add_argument(
        "--method",
        default="hired",
        help="method name, or several separated by commas to compare them at the same budget (one row each); "
        "per-method options as NAME:KEY=VALUE[:KEY=VALUE], e.g. hired,hired:mapping=reference (default: hired)",
    )
    p.add_argument("--budget", type=float, default=None, help="token budget rate in (0, 1], for every method")
    p.add_argument("--alpha", type=float, default=None, help="full-image share of the budget (methods that have it)")
    p.add_argument(
        "--option",
        action="append",
        metavar="[NAME:]KEY=VALUE",
        help="option for every method that has it (NAME: only for method NAME), parsed by its type",
    )
    p.add_argument("--prompt", default="Describe the image.", help="text that goes with the image (one forward pass)")
    p.add_argument(
        "--heatmap",
        action="store_true",
        help="also draw the attention maps the method used ([CLS] attention, or on towers without "
        "[CLS] such as OneVision's SigLIP the attention each patch receives)",
    )
    p.add_argument("--title", default=None, help="figure title (default: model and image names)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 on CPU")
    p.set_defaults(func=cmd_show)


def methods_from_args(args) -> list:
    """The methods of ``--method a,b:k=v`` with ``--budget``/``--alpha``/``--option`` given to each that has them.

    Every option text is parsed by the method's declared type (``keep_newline=maybe`` is refused, naming
    the option); every refusal is a :class:`~hired.cli.common.CommandError`."""
    specs = [spec.strip() for spec in args.method.split(",") if spec.strip()]
    if not specs:
        raise CommandError("--method names no method")
    names = [spec.split(":")[0].strip() for spec in specs]
    flags = {k: getattr(args, k) for k in ("budget", "alpha") if getattr(args, k) is not None}
    used = set()
    methods = []
    with command_errors():
        per = assign_options(args.option, names, "--option", "--method")
        for spec, name, options in zip(specs, names, per):
            cls = method_class(name)
            for key, value in flags.items():
                if key in option_types(cls):
                    options[key] = value
                    used.add(key)
            for item in spec.split(":")[1:]:
                _, key, text = split_option(item, f"--method {name}:", targeted=False)
                options[key] = option_value(cls, key, text, f"--method {name}:{item}")
            methods.append(build_method(name, options))
    unused = sorted(set(flags) - used)
    if unused:
        raise CommandError(f"no chosen method has the option {', '.join(unused)}")
    return methods


def cmd_show(args) -> int:
    """``hired show``: run each method once on the image and draw what it kept."""
    try:
        viz.matplotlib_classes()
    except ImportError as err:
        raise CommandError(str(err)) from None
    methods = methods_from_args(args)
    image = load_image(args.image)
    out = viz.check_figure_path(args.out)
    model, processor = load_model(args.model, args.device, args.dtype)
    inner, family = family_of(model)
    if family.merged_grid:
        raise CommandError(
            f"hired show draws LLaVA partitions; {family.title} images are one grid of merged tokens, which it "
            "does not draw yet (hired generate and hired bench run this model)"
        )
    runs = [viz.run_method(model, processor, image, method, args.prompt) for method in methods]
    labels = [viz.method_label(m) for m in methods]
    fig = viz.plot_selection(
        image,
        [r.selection for r in runs],
        scores=[r.scores for r in runs] if args.heatmap else None,
        score_layers=[r.layers for r in runs],
        score_kind=[r.kind for r in runs],
        labels=labels,
        heatmap=args.heatmap,
        title=args.title if args.title is not None else f"{Path(args.model).name} on {Path(args.image).name}",
        patch_size=family.geometry(inner.config).patch_size,  # one token's side in pixels (InternVL: merged)
        stretched=family.fills_canvas,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=viz.DPI)
    for label, run in zip(labels, runs):
        sel = run.selection
        parts = ", ".join(f"{len(p.kept)}/{p.valid}" for p in sel.partitions)
        grid = f"{sel.grid[0]}x{sel.grid[1]} grid, " if sel.partitions[1:] else ""
        print(f"{label}: {grid}{sel.num_kept} patches kept (full image first; kept/valid): {parts}")
    print(f"wrote {out}")
    return 0
