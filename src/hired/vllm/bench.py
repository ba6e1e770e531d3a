"""Serving throughput and TTFT through vLLM, as ``hired bench-vllm`` (:mod:`hired.cli.bench_vllm`) runs it.

For each configuration — stock vLLM (no ``hired`` key), a method at every budget, and the oracle at every
budget (the same token count with no selection work: the first patches in pack order) — one in-process
engine is started and timed on fresh images (a new picture per request, so no cache hides the encoder). A
method and its oracle run side by side, interleaved run by run on the same pictures, so that other work
on the machine hits both alike:

* throughput: ``--requests`` requests submitted at once, each generating exactly ``--new-tokens`` tokens
  (``ignore_eos``): requests/s and output tokens/s over the wall time;
* TTFT: one request alone with one output token: its wall time (preprocessing, encoder, prefill), split
  into the encoder stages the model's stage clock measured in that request: the vision tower (with the
  [CLS]-row hooks, whose own time is shown too), the selection (tower end to projector start: scores,
  budgets, top-k, gather of the kept features) and the rest (preprocessing, projector, prefill, first
  token).

Each figure is the median of ``--runs`` timed runs after a warm-up (a batch and a single request), with
min and max; the overhead of the method over its oracle is given by medians, by minima and as the
median of the paired per-run ratios.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_BUDGETS = (1.0, 0.4, 0.2)
PROMPT = "USER: <image>\nDescribe the picture in detail . ASSISTANT:"


def _images(size: int, seeds: list[int]):
    import numpy as np
    from PIL import Image

    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        # smooth colour fields plus noise: a different picture per seed
        y, x = np.mgrid[0:size, 0:size] / size
        base = np.stack(
            [np.sin((x * rng.uniform(1, 6) + y * rng.uniform(1, 6)) * np.pi + rng.uniform(0, 6)) for _ in range(3)], -1
        )
        pixels = ((base * 0.4 + 0.5 + rng.normal(0, 0.08, (size, size, 3))).clip(0, 1) * 255).astype("uint8")
        out.append(Image.fromarray(pixels))
    return out


def _machine() -> dict:
    from hired.machine import cpu_name, vllm_version

    cpu = cpu_name()
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if vllm_version() is not None:
        info["vllm"] = vllm_version()
    return info


def prepare_model(args, workdir: Path) -> str:
    """The folder vLLM loads: ``args.model``, or the random-weight ``args.arch`` written to ``workdir``."""
    if args.model:
        return args.model
    if not args.random_weights:
        raise ValueError("--arch builds random weights; confirm with --random-weights")
    from hired.bench.archs import ARCHS, build_arch
    from hired.vllm.checkpoint import save_for_vllm

    if args.arch not in ARCHS:
        raise ValueError(f"unknown --arch {args.arch!r}; available: {', '.join(ARCHS)}")
    model, processor = build_arch(args.arch)
    path = workdir / args.arch
    save_for_vllm(model, processor, path)
    del model
    gc.collect()
    return str(path)


def method_entry(args, budget: float, oracle: bool) -> dict:
    """The ``hired`` entry of vLLM's ``hf_overrides`` for ``args.method`` (with its ``--option`` values) at
    ``budget``, or its oracle; ``ValueError`` for an option that is not ``KEY=VALUE`` or a method config
    that :func:`hired.vllm.config.parse_method` refuses."""
    from hired.methods.options import guess_value
    from hired.vllm.config import parse_method

    entry = {"method": args.method, "budget": budget}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        entry[key.strip().replace("-", "_")] = guess_value(value)
    if oracle:
        entry["oracle"] = True
    parse_method(entry)
    return entry


def prompt_for(path: str) -> str:
    """:data:`PROMPT` with the image placeholder of the model family in folder ``path`` (LLaVA's ``<image>``,
    Qwen's ``<|image_pad|>`` between its vision markers, InternVL's ``<IMG_CONTEXT>``)."""
    from transformers import AutoConfig, AutoProcessor

    from hired.families import get_family
    from hired.vllm import ARCHITECTURES

    names = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    arch = next((a for a in names if a in ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"the model's architectures {names} are none the plugin serves: {', '.join(ARCHITECTURES)}")
    family = get_family(ARCHITECTURES[arch][0])
    return PROMPT.replace("<image>", family.image_placeholder(AutoProcessor.from_pretrained(path)))


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


class _Engine:
    """One in-process vLLM engine for one configuration, with the model's stage clock on."""

    def __init__(self, path: str, label: str, overrides: dict, args, group_size: int, kv_bytes: int | None = None):
        from vllm import LLM, SamplingParams

        self.label, self.overrides, self.args = label, overrides, args
        self.prompt = prompt_for(path)
        extra = {}
        if args.gpu_memory_utilization is not None:
            extra["gpu_memory_utilization"] = args.gpu_memory_utilization
        elif _cuda():
            extra["gpu_memory_utilization"] = round(0.85 / group_size, 3)  # the engines of a group share the GPU
        if kv_bytes is not None:
            extra["kv_cache_memory_bytes"] = kv_bytes  # on a CPU it replaces the memory fraction
        self.llm = LLM(
            model=path,
            hf_overrides=overrides,
            dtype=args.dtype,
            enforce_eager=True,
            max_model_len=args.max_model_len,
            tensor_parallel_size=args.tensor_parallel_size,
            seed=0,
            **extra,
        )
        self.gen = SamplingParams(
            max_tokens=args.new_tokens, min_tokens=args.new_tokens, ignore_eos=True, temperature=0.0, detokenize=False
        )
        self.first = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        try:  # the stage clock needs the model in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
            self.llm.apply_model(lambda model: model.hired_timing(True))
            self.clocked = True
        except Exception:  # noqa: BLE001 - no split then, the timings stay
            self.clocked = False
        self.rps, self.tps, self.ttft, self.prompt_tokens = [], [], [], None
        self.stages: dict[str, list[float]] = {}

    def _requests(self, seeds):
        return [
            {"prompt": self.prompt, "multi_modal_data": {"image": im}} for im in _images(self.args.image_size, seeds)
        ]

    def _timings(self) -> list[dict]:
        return self.llm.apply_model(lambda model: model.hired_take_timings())[0] if self.clocked else []

    def warm_up(self, seeds: list[int]) -> None:
        """A batch like the throughput runs' and one request like the TTFT runs' (every shape seen once)."""
        self.llm.generate(self._requests(seeds[:-1]), self.gen, use_tqdm=False)
        self.llm.generate(self._requests(seeds[-1:]), self.first, use_tqdm=False)
        self._timings()

    def throughput(self, seeds: list[int]) -> None:
        batch = self._requests(seeds)
        start = time.perf_counter()
        outs = self.llm.generate(batch, self.gen, use_tqdm=False)
        wall = time.perf_counter() - start
        self.rps.append(len(outs) / wall)
        self.tps.append(sum(len(o.outputs[0].token_ids) for o in outs) / wall)
        self.prompt_tokens = statistics.median(len(o.prompt_token_ids) for o in outs)
        self._timings()  # drop the batch's passes

    def time_to_first_token(self, seed: int) -> None:
        single = self._requests([seed])
        start = time.perf_counter()
        self.llm.generate(single, self.first, use_tqdm=False)
        ttft = time.perf_counter() - start
        self.ttft.append(ttft * 1000)
        passes = self._timings()
        if not passes:
            return
        stage = {
            name: sum(p[name] or 0.0 for p in passes)
            for name in ("encoder", "vision", "cls_rows", "selection", "projector")
        }
        stage["rest"] = ttft - stage["vision"] - stage["selection"]
        for name, value in stage.items():
            self.stages.setdefault(name, []).append(value * 1000)

    def row(self) -> dict:
        return {
            "config": self.label,
            "hf_overrides": self.overrides,
            "prompt_tokens": self.prompt_tokens,
            "requests_per_s": _summary(self.rps),
            "output_tokens_per_s": _summary(self.tps),
            "ttft_ms": _summary(self.ttft),
            "stages_ms": {name: _summary(values) for name, values in self.stages.items()},
        }

    def close(self) -> None:
        shutdown_engine(self.llm)
        del self.llm
        gc.collect()


def shutdown_engine(llm) -> None:
    """Run the teardown of a ``vllm.LLM`` now rather than whenever the object is collected: its engine core's
    ``shutdown`` (executor, scheduler, the ``gc.freeze()`` of start-up undone, vLLM's distributed state torn
    down), so that the next engine starts on a clean process. The distributed state is shared by the
    in-process engines: shut down the engines that run together together, after their last request."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def kv_cache_bytes(path: str, dtype: str, max_model_len: int, sequences: int) -> int:
    """Bytes of a KV cache that holds ``sequences`` sequences of ``max_model_len`` tokens for the language
    model in folder ``path`` (keys and values of every layer; a hybrid model's linear-attention layers are
    counted as attention layers, which over-sizes its cache), rounded up to a MiB."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(path).get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)
    mib = 1 << 20
    return -(-per_token * max_model_len * sequences // mib) * mib


def kv_cache_setting(args, path: str) -> tuple[int | None, str]:
    """``(bytes, how)``: the KV cache each engine gets and where that comes from. ``--kv-cache-gib`` if
    given; on a CPU, when neither ``VLLM_CPU_KVCACHE_SPACE`` (which vLLM itself reads, and which wins) nor
    ``--gpu-memory-utilization`` is set, a cache sized for ``--requests`` sequences of ``--max-model-len``
    tokens (:func:`kv_cache_bytes`), instead of vLLM-CPU's default of 92% of the machine's memory per
    engine, which leaves nothing for the second engine of a group; otherwise ``None`` (vLLM's sizing)."""
    gib = 1 << 30
    chosen = getattr(args, "kv_cache_gib", None)
    if chosen is not None:
        if chosen <= 0:
            raise ValueError(f"--kv-cache-gib must be positive, got {chosen:g}")
        return int(chosen * gib), f"{chosen:g} GiB per engine (--kv-cache-gib)"
    if _cuda():
        return None, "vLLM's, from the GPU memory fraction (--gpu-memory-utilization)"
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None, f"{os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB per engine (VLLM_CPU_KVCACHE_SPACE)"
    if args.gpu_memory_utilization is not None:
        return None, f"vLLM's from --gpu-memory-utilization {args.gpu_memory_utilization:g}"
    size = kv_cache_bytes(path, args.dtype, args.max_model_len, args.requests)
    return size, f"{size / gib:.2f} GiB per engine ({args.requests} sequences of {args.max_model_len} tokens)"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _run_group(
    path: str, group: list[tuple[str, dict]], args, seed_base: int, bar=None, kv_bytes: int | None = None
) -> list[dict]:
    """Start the group's engines, warm each up, then time them in turn, run by run, on the same pictures
    (the order alternates every run); shut them all down before the next group starts."""
    engines = []
    try:
        for label, overrides in group:
            engines.append(_Engine(path, label, overrides, args, len(group), kv_bytes))
        seed = seed_base
        for engine in engines:
            engine.warm_up(list(range(seed, seed + args.requests + 1)))
        seed += args.requests + 1
        for run in range(args.runs):
            order = engines if run % 2 == 0 else engines[::-1]
            batch = list(range(seed, seed + args.requests))
            for engine in order:
                engine.throughput(batch)
            for engine in order:
                engine.time_to_first_token(seed + args.requests)
            seed += args.requests + 1
        rows = [engine.row() for engine in engines]
    finally:
        for engine in engines:
            engine.close()
    for row in rows:
        print(
            f"{row['config']:<22} prompt {row['prompt_tokens']:>6.0f} tok  {row['requests_per_s']['median']:7.3f} req/s  "
            f"{row['output_tokens_per_s']['median']:8.2f} out tok/s  TTFT {row['ttft_ms']['median']:8.1f} ms",
            flush=True,
        )
        if bar:
            bar.update(1)
    return rows


def overheads(rows: list[dict]) -> list[dict]:
    """The method over its oracle at every budget: TTFT ratios by medians, by minima and the median of the
    paired per-run ratios, and the [CLS] rows' and the selection's share of the vision tower (medians)."""
    out = []
    for row in rows:
        entry = row["hf_overrides"].get("hired")
        if not entry or entry.get("oracle"):
            continue
        oracle = next((r for r in rows if r["hf_overrides"].get("hired") == {**entry, "oracle": True}), None)
        if oracle is None:
            continue
        m, o = row["ttft_ms"], oracle["ttft_ms"]
        paired = [a / b for a, b in zip(m["runs"], o["runs"])]
        stages = row.get("stages_ms", {})

        def share(name, stages=stages):
            if name not in stages or "vision" not in stages or not stages["vision"]["median"]:
                return None
            return stages[name]["median"] / stages["vision"]["median"]

        out.append(
            {
                "config": row["config"],
                "oracle": oracle["config"],
                "ttft_median": m["median"] / o["median"] - 1,
                "ttft_min": m["min"] / o["min"] - 1,
                "ttft_paired_median": statistics.median(paired) - 1,
                "cls_rows_of_vision": share("cls_rows"),
                "selection_of_vision": share("selection"),
            }
        )
    return out


def _fmt(s: dict, digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _share(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _stage(row: dict, name: str) -> str:
    s = row.get("stages_ms", {}).get(name)
    return "–" if s is None else f"{s['median']:.1f} [{s['min']:.1f}]"


def table(rows: list[dict]) -> str:
    """The throughput and TTFT table of ``rows`` (the ``rows`` of ``hired bench-vllm --json``), one line per
    configuration: median [min, max] over the runs; the TTFT's stages: median [min]."""
    lines = [
        "| configuration | prompt tokens | requests/s | output tokens/s | TTFT (ms) | vision tower (ms) | "
        "selection (ms) | rest of TTFT (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['prompt_tokens']:.0f} | {_fmt(row['requests_per_s'], 3)} | "
            f"{_fmt(row['output_tokens_per_s'], 2)} | {_fmt(row['ttft_ms'], 1)} | {_stage(row, 'vision')} | "
            f"{_stage(row, 'selection')} | {_stage(row, 'rest')} |"
        )
    return "\n".join(lines)


def overhead_table(overheads: list[dict]) -> str:
    """The method-vs-oracle table of ``overheads`` (the ``overheads`` of ``hired bench-vllm --json``, as
    :func:`overheads` computes them), one line per method configuration and its oracle."""
    lines = [
        "| method vs oracle | TTFT, medians | TTFT, minima | TTFT, paired runs (median) | [CLS] rows / vision tower "
        "| selection / vision tower |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for o in overheads:
        lines.append(
            f"| {o['config']} vs {o['oracle']} | {_pct(o['ttft_median'])} | {_pct(o['ttft_min'])} | "
            f"{_pct(o['ttft_paired_median'])} | {_share(o['cls_rows_of_vision'])} | {_share(o['selection_of_vision'])} |"
        )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The results as Markdown tables (median [min, max] over the runs; stages: median [min])."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"# vLLM serving benchmark: {s['model']}",
        "",
        f"- date: {result['date']}",
        f"- machine: {m.get('gpu') or m['cpu']}, {m['cores']} cores; {m.get('vllm', 'vllm ?')}, torch {m.get('torch', '?')}",
        f"- load average (1, 5, 15 min) before / after: {m.get('load_average_before')} / "
        f"{m.get('load_average_1_5_15min')} (other processes share the cores)",
        f"- command: `{result['command']}`",
        f"- {s['requests']} requests per throughput run, {s['new_tokens']} output tokens each, one {s['image_size']}x"
        f"{s['image_size']} picture per request (a new one every request); TTFT: one request alone, one token; "
        f"median [min, max] of {s['runs']} runs; a method and its oracle interleaved run by run on the same pictures",
        *([f"- KV cache: {s['kv_cache']}"] if s.get("kv_cache") else []),
        "",
        table(result["rows"]),
        "",
        "TTFT split (median [min]) from the model's stage clock in each TTFT request: the vision tower (for a "
        "method with its [CLS]-row hooks), the selection (tower end to projector start: scores, budgets, top-k, "
        "gather; for stock vLLM nothing), the rest (preprocessing, projector, prefill, first token).",
    ]
    over = result.get("overheads") or []
    if over:
        lines += ["", overhead_table(over)]
    lines += [
        "",
        "Oracle: the same token count as the method at that budget, with no [CLS] scores and no selection "
        "(the first patches in pack order); the method's TTFT over the oracle's is its selection overhead.",
        "",
    ]
    return "\n".join(lines)


def run_bench_vllm(args, command: str) -> dict:
    """Run the benchmark that ``args`` describe (the options of ``hired bench-vllm`` as attributes: ``model``
    or ``arch`` with ``random_weights``, ``method``, ``option``, ``budgets``, ``requests``, ``new_tokens``,
    ``runs``, ``image_size``, ``dtype``, ``max_model_len``, ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``kv_cache_gib``, ``no_oracle``); returns the JSON-ready result
    (:func:`markdown` renders it), ``command`` being the command line it records. ``ValueError`` for
    settings it refuses."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name in ("requests", "new_tokens", "runs", "image_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.budgets:
        raise ValueError("--budgets needs at least one budget")
    if getattr(args, "kv_cache_gib", None) is not None and args.kv_cache_gib <= 0:
        raise ValueError(f"--kv-cache-gib must be positive, got {args.kv_cache_gib:g}")
    groups = [[("stock vLLM", {})]]  # engines of one group are alive together and interleaved
    for budget in args.budgets:
        group = [(f"{args.method} {budget:g}", {"hired": method_entry(args, budget, oracle=False)})]
        if not args.no_oracle:
            group.append((f"oracle {budget:g}", {"hired": method_entry(args, budget, oracle=True)}))
        groups.append(group)
    if args.dtype == "auto":
        try:
            import torch

            args.dtype = "float16" if torch.cuda.is_available() else "float32"
        except ImportError:
            args.dtype = "float32"
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="hired-bench-vllm-") as tmp:
        path = prepare_model(args, Path(tmp))
        kv_bytes, kv_how = kv_cache_setting(args, path)
        rows = []
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            tqdm = None
        bar = tqdm(total=sum(map(len, groups)), desc="configurations", file=sys.stderr) if tqdm else None
        for i, group in enumerate(groups):
            rows += _run_group(path, group, args, seed_base=1000 * (i + 1), bar=bar, kv_bytes=kv_bytes)
        if bar:
            bar.close()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": {**_machine(), "load_average_before": load_before},
        "settings": {
            "model": args.model or f"{args.arch} (random weights)",
            "method": args.method,
            "options": args.option or [],
            "budgets": list(args.budgets),
            "requests": args.requests,
            "new_tokens": args.new_tokens,
            "runs": args.runs,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "tensor_parallel_size": args.tensor_parallel_size,
            "kv_cache": kv_how,
        },
        "rows": rows,
        "overheads": overheads(rows),
    }
    return result
