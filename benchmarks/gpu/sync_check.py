"""Count the host-device synchronisations of one prefill forward pass, stock model against a method.

The goal for HiRED on a GPU is *no host-device sync per image*: whatever the method adds to the stock
model's own synchronisations must not grow with the batch. With ``torch.cuda.set_sync_debug_mode("warn")``
every synchronising CUDA call (``.item()``, ``.tolist()``, ``nonzero``, a device-to-host copy, ...) raises
a warning; this script counts them in one ``model(**inputs)`` (the prefill: vision tower, selection,
projector, language model) for the stock model and for each method, at two batch sizes, and reports

    extra syncs per added image = ((method - stock) at batch N - (method - stock) at batch 1) / (N - 1)

which should be 0. On a CPU there is nothing to count: the same forward passes run (so CI exercises this
code) and the counts are ``null``.

    PYTHONPATH=src python benchmarks/gpu/sync_check.py --device cuda --arch small --json sync-check.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings


def _inputs(model, processor, image, prompt: str, batch: int):
    import torch

    inputs = processor(images=[image] * batch, text=[prompt] * batch, return_tensors="pt", padding=True)
    inputs = {k: (v.to(model.device) if torch.is_tensor(v) else v) for k, v in dict(inputs).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def count_syncs(model, inputs, cuda: bool) -> tuple[int | None, list[str]]:
    """Synchronising CUDA calls in one forward pass (``None`` off CUDA) and where they came from."""
    import torch

    with torch.inference_mode():
        model(**inputs)  # warm-up: lazy initialisation must not count
        if not cuda:
            model(**inputs)
            return None, []
        torch.cuda.synchronize()
        warn_always = torch.is_warn_always_enabled()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.set_warn_always(True)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model(**inputs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                torch.set_warn_always(warn_always)
        torch.cuda.synchronize()
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), [f"{w.filename}:{w.lineno}" for w in syncs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--arch", default="small", help="hired bench architecture, or 'tiny' (hired.testing, fastest)")
    p.add_argument("--methods", default="hired,cls_topk", help="comma-separated method names")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--batch-sizes", default="1,4", help="two batch sizes, the smaller first")
    p.add_argument("--json", required=True, metavar="PATH")
    args = p.parse_args(argv)

    import torch

    import hired

    try:
        from hired.inference import build_prompt, demo_image
    except ImportError:  # older versions: hired.commands, or before it existed hired.cli
        try:
            from hired.commands import build_prompt, demo_image
        except ImportError:
            from hired.cli import build_prompt, demo_image

    start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"sync_check: --device {args.device} but CUDA is not available")
    dtype = {"auto": torch.float16 if cuda else torch.float32}.get(args.dtype) or getattr(torch, args.dtype)
    if args.arch == "tiny":
        from hired.testing import tiny_llava_next

        model, processor = tiny_llava_next(seed=0)
        model = model.to(device=args.device, dtype=dtype)
    else:
        from hired.bench.archs import build_arch

        model, processor = build_arch(args.arch, args.device, dtype)
    image = demo_image((600, 600))
    prompt = build_prompt(processor, "What is shown in this image?")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if len(batches) != 2 or not 1 <= batches[0] < batches[1]:
        raise SystemExit(f"sync_check: --batch-sizes wants two increasing sizes, got {args.batch_sizes!r}")

    counts: dict[str, dict[str, int | None]] = {}
    sites: dict[str, collections.Counter] = {}
    for label, method in [("stock", None)] + [
        (f"{name}@{args.budget:g}", hired.get_method(name, budget=args.budget))
        for name in args.methods.split(",")
        if name.strip()
    ]:
        counts[label], sites[label] = {}, collections.Counter()
        if method is not None:
            hired.apply(model, processor, method)
        try:
            for batch in batches:
                n, where = count_syncs(model, _inputs(model, processor, image, prompt, batch), cuda)
                counts[label][str(batch)] = n
                sites[label].update(where)
                print(f"{label:>16} batch {batch}: {'-' if n is None else n} synchronising calls", flush=True)
        finally:
            if method is not None:
                hired.remove(model, processor)

    lo, hi = (str(b) for b in batches)
    stock = counts["stock"]
    extra = {}
    for label, c in counts.items():
        if label == "stock":
            continue
        if c[lo] is None:
            extra[label] = None
        else:
            extra[label] = ((c[hi] - stock[hi]) - (c[lo] - stock[lo])) / (batches[1] - batches[0])
    result = {
        "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device) if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "arch": args.arch,
        "image_size": [600, 600],
        "batch_sizes": batches,
        "counted": cuda,
        "note": None if cuda else "no CUDA: torch.cuda.set_sync_debug_mode has nothing to count; counts are null",
        "sync_counts": counts,
        "extra_syncs_per_added_image": extra,
        "no_sync_per_image": None if not cuda else all(v == 0 for v in extra.values()),
        "sites": {k: v.most_common(12) for k, v in sites.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    for label, v in extra.items():
        print(f"{label}: extra syncs per added image = {'-' if v is None else f'{v:g}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
