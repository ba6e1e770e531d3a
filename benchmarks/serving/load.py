"""Load and fault run of vLLM's OpenAI server with the hired plugin, on a tiny random-weight LLaVA-NeXT.

    python benchmarks/serving/load.py --requests 200 --concurrency 32 [--json PATH]

Run it with the Python of an environment that has vLLM and hired. It builds the tiny model locally
(nothing downloaded), starts ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with the
``hired`` entry of ``cases.MODEL_ENTRY`` (and ``--trust-request-mm-kwargs``, vLLM's gate for request
options), sends every good request alone (its reference answer), then ``--requests`` requests from
``--concurrency`` clients at once: one, two or three pictures of mixed sizes or text only, the model's
options or the request's own (``mm_processor_kwargs``), streamed or not, and faults (see
``cases.fault_cases``). Checks:

* every good request: HTTP 200, ``usage.prompt_tokens`` equal to the core's count (text tokens plus
  ``num_image_tokens`` of each picture's layout) and the greedy text it got alone;
* every bad request: a 4xx whose message names the problem; edge-size pictures: served like a good
  request, or a 4xx; a fault that vLLM's own image loading answers with a 5xx is reported as known;
* the server is still up at the end: ``/health`` and a good request answered as before.

It prints a Markdown table and a summary (latency percentiles, the server's RSS at start and end from
``/proc/<pid>/status``) and exits with 1 if any check fails (2 for a bad command line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from cases import MAX_IMAGES, MODEL_ENTRY, Case, Counter, fault_cases, fault_share, good_cases, load_cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests under load (default 200)")
    p.add_argument("--concurrency", type=int, default=32, help="clients sending at once (default 32)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens generated per request (default 8)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="pictures and the mix of requests")
    p.add_argument("--timeout", type=float, default=300, help="seconds one request may take (default 300)")
    p.add_argument("--startup-timeout", type=float, default=600)
    p.add_argument("--json", metavar="PATH", help="write the results (every answer) as JSON")
    p.add_argument("--server-log", metavar="PATH", help="keep the server's output there")
    p.add_argument(
        "--skip-fault",
        action="append",
        default=[],
        metavar="LABEL",
        help="leave out the fault of that label, repeatable (e.g. '10000x10000 image')",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument of the server, repeatable (e.g. --server-arg=--mm-processor-cache-gb=0)",
    )
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.max_tokens < 1:
        p.error("--concurrency and --max-tokens must be at least 1")
    return args


# ------------------------------------------------------------------------------------------ the server


def build_model(folder: Path) -> str:
    from hired.testing import tiny_llava_next
    from hired.vllm.checkpoint import save_for_vllm

    model, processor = tiny_llava_next(seed=1)
    return str(save_for_vllm(model, processor, folder / "tiny-llava-next"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(path: str, port: int, args) -> list[str]:
    from hired.vllm.bench import kv_cache_bytes

    # a KV cache for every client's longest sequence (vLLM-CPU's default takes 92% of the memory; the
    # VLLM_CPU_KVCACHE_SPACE variable, where set, overrides this)
    kv = max(kv_cache_bytes(path, "float32", args.max_model_len, args.concurrency), 256 << 20)
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", path, "--host", "127.0.0.1", "--port", str(port)),
        *("--dtype", "float32", "--enforce-eager", "--max-model-len", str(args.max_model_len)),
        *("--kv-cache-memory-bytes", str(kv)),
        *("--limit-mm-per-prompt", json.dumps({"image": MAX_IMAGES})),
        "--trust-request-mm-kwargs",
        *("--hf-overrides", json.dumps({"hired": MODEL_ENTRY})),
        *args.server_arg,
    ]


def wait_healthy(proc: subprocess.Popen, port: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited during start-up with status {proc.returncode}")
        if health(port):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the server was not healthy after {deadline_s:g} s")


def health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server, then SIGKILL to its process group (its own session) if anything is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _status_mib(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(pid: int) -> dict:
    """RSS (and peak RSS) in MiB of the server process and of it with its children (vLLM's engine core and
    worker; the sum counts shared pages once per process)."""
    tree = [
        {
            "pid": p,
            "name": _name(p),
            "rss_mib": round(_status_mib(p, "VmRSS"), 1),
            "peak_mib": round(_status_mib(p, "VmHWM"), 1),
        }
        for p in _tree(pid)
    ]
    return {
        "server_rss_mib": tree[0]["rss_mib"],
        "tree_rss_mib": round(sum(p["rss_mib"] for p in tree), 1),
        "tree_peak_rss_mib": round(sum(p["peak_mib"] for p in tree), 1),
        "processes": tree,
    }


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------- the requests


def _message(body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        error = json.loads(text).get("error", text)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return text[:300]


def send(port: int, case: Case, model: str, max_tokens: int, timeout: float) -> dict:
    """The answer to ``case``: ``status`` (an HTTP status; ``"200+error"`` for an error event in a stream,
    ``"timeout"``, ``"no answer"``), ``ms``, and ``text`` and ``prompt_tokens`` or ``error``."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(case.payload(model, max_tokens)).encode(),
        headers={"Content-Type": "application/json"},
    )
    out: dict = {"status": None, "text": None, "prompt_tokens": None, "error": None}
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out["status"] = resp.status
            if not case.stream:
                reply = json.loads(resp.read())
                out["text"] = reply["choices"][0]["message"]["content"]
                out["prompt_tokens"] = reply["usage"]["prompt_tokens"]
            else:
                parts = []
                for raw in resp:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        out["status"], out["error"] = "200+error", _message(json.dumps(chunk))
                    for choice in chunk.get("choices") or []:
                        parts.append((choice.get("delta") or {}).get("content") or "")
                    if chunk.get("usage"):
                        out["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
                out["text"] = "".join(parts)
    except urllib.error.HTTPError as err:
        out["status"], out["error"] = err.code, _message(err.read())
    except TimeoutError:
        out["status"] = "timeout"
    except (urllib.error.URLError, ConnectionError, OSError, ValueError) as err:
        late = isinstance(getattr(err, "reason", None), TimeoutError)
        out["status"], out["error"] = ("timeout", None) if late else ("no answer", repr(err))
    out["ms"] = round((time.perf_counter() - start) * 1000, 1)
    return out


# ----------------------------------------------------------------------------------------- the checks


def problem(case: Case, answer: dict) -> str | None:
    """Why ``answer`` is wrong for ``case``, or ``None``."""
    status = answer["status"]
    client_error = isinstance(status, int) and 400 <= status < 500
    ref = case.reference
    if case.kind == "good" or (case.kind == "edge" and ref and ref["status"] == 200):
        if status != 200:
            return f"status {status}: {answer['error']}"
        if answer["prompt_tokens"] != case.count:
            return f"prompt_tokens {answer['prompt_tokens']}, expected {case.count}"
        if ref is None or answer["text"] != ref["text"]:
            return f"text {answer['text']!r}, alone {ref and ref['text']!r}"
        return None
    if case.kind == "edge":
        return None if client_error and answer["error"] else f"status {status}: {answer['error']}"
    if case.kind == "known" and status == 500 and case.expect in (answer["error"] or ""):
        return None
    if not client_error:
        return f"status {status}, expected a 4xx: {answer['error']}"
    if case.expect not in (answer["error"] or ""):
        return f"message {answer['error']!r} does not contain {case.expect!r}"
    return None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _row(case: Case) -> dict:
    return {
        "label": case.label,
        "kind": case.kind,
        "sent": 0,
        "streamed": 0,
        "with_options": 0,
        "answers": Tally(),
        "failed": 0,
        "messages": Tally(),
        "ms": [],
    }


def evaluate(goods: list[Case], faults: list[Case], load: list[Case], answers: list[dict], end: dict) -> dict:
    """Rows of the table (the good shapes, then the faults in ``faults``' order), the checks (name, ok,
    detail) and the summary figures; each answer gets its ``problem`` (:func:`problem`)."""
    refs = goods + [f for f in faults if f.kind == "edge"]
    wrong_refs = [
        c for c in refs if c.reference and c.reference["status"] == 200 and c.reference["prompt_tokens"] != c.count
    ]
    failed_refs = [c for c in goods if not c.reference or c.reference["status"] != 200]
    checks = [
        (
            "references (each good request alone) served with the core's count",
            not wrong_refs and not failed_refs,
            f"{len(refs)} sent, {len(failed_refs)} good ones not served, {len(wrong_refs)} wrong counts",
        )
    ]
    rows = {c.label: _row(c) for c in goods + faults}
    for case, answer in zip(load, answers):
        row = rows[case.label]
        row["sent"] += 1
        row["streamed"] += case.stream
        row["with_options"] += case.options is not None
        row["answers"][str(answer["status"])] += 1
        row["ms"].append(answer["ms"])
        if answer["error"]:
            error = answer["error"]
            row["messages"][error if len(error) <= 120 else error[:119] + "…"] += 1
        answer["problem"] = problem(case, answer)
        row["failed"] += answer["problem"] is not None
    rows = {label: row for label, row in rows.items() if row["sent"]}
    for row in rows.values():
        if row["failed"]:
            detail = f"{row['failed']} of {row['sent']} wrong"
        else:
            detail = "known vLLM behaviour: 5xx" if row["kind"] == "known" and "500" in row["answers"] else "ok"
        checks.append((f"{row['kind']}: {row['label']}", not row["failed"], detail))
    checks.append(("server up after the load: /health", end["health"], "200" if end["health"] else "no answer"))
    final = end["final"]
    final_ok = final is not None and final.get("problem") is None
    checks.append(
        ("server up after the load: a good request answered as alone", final_ok, "ok" if final_ok else str(final))
    )
    pairs = list(zip(load, answers))
    good = [a for c, a in pairs if c.kind == "good"]
    faulty = [a for c, a in pairs if c.kind != "good"]
    summary = {
        "requests_sent": len(load),
        "good_sent": len(good),
        "good_served": sum(a["status"] == 200 for a in good),
        "wrong_counts": sum((a["problem"] or "").startswith("prompt_tokens") for a in good),
        "different_outputs": sum((a["problem"] or "").startswith("text") for a in good),
        "faults_sent": len(faulty),
        "good_latency_ms": {q: percentile([a["ms"] for a in good], n) for q, n in (("p50", 50), ("p99", 99))},
        "fault_latency_ms": {q: percentile([a["ms"] for a in faulty], n) for q, n in (("p50", 50), ("p99", 99))},
    }
    return {"rows": list(rows.values()), "checks": checks, "summary": summary}


# ------------------------------------------------------------------------------------------ the report


def _answers(tally: Tally) -> str:
    return ", ".join(f"{status} x{n}" for status, n in sorted(tally.items()))


def table(result: dict) -> str:
    lines = [
        "| requests | kind | sent | streamed | with options | answers | wrong | p50 / p99 ms |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        ms = f"{percentile(row['ms'], 50):.0f} / {percentile(row['ms'], 99):.0f}"
        lines.append(
            f"| {row['label']} | {row['kind']} | {row['sent']} | {row['streamed']} | {row['with_options']} | "
            f"{_answers(row['answers'])} | {row['failed']} | {ms} |"
        )
    lines += ["", "| fault | answer | message |", "|---|---|---|"]
    for row in result["rows"]:
        if row["kind"] != "good":
            message = "; ".join(m.replace("|", "\\|") for m in row["messages"]) or "(served)"
            lines.append(f"| {row['label']} | {_answers(row['answers'])} | {message} |")
    s, m = result["summary"], result["memory"]
    lines += [
        "",
        f"- requests under load: {s['requests_sent']} from {result['settings']['concurrency']} clients in "
        f"{result['load_s']:.1f} s ({s['requests_sent'] / result['load_s']:.2f} requests/s); good: "
        f"{s['good_served']} of {s['good_sent']} served, {s['wrong_counts']} wrong counts, "
        f"{s['different_outputs']} different outputs; faults: {s['faults_sent']}",
        f"- latency of the good requests p50 / p99: {s['good_latency_ms']['p50']:.0f} / "
        f"{s['good_latency_ms']['p99']:.0f} ms; of the faults: {s['fault_latency_ms']['p50']:.0f} / "
        f"{s['fault_latency_ms']['p99']:.0f} ms",
        f"- server RSS (API process / with its {len(m['start']['processes']) - 1} child processes) at start: "
        f"{m['start']['server_rss_mib']:.0f} / {m['start']['tree_rss_mib']:.0f} MiB; at the end: "
        f"{m['end']['server_rss_mib']:.0f} / {m['end']['tree_rss_mib']:.0f} MiB (peak of the processes: "
        f"{m['end']['tree_peak_rss_mib']:.0f} MiB)",
        "- RSS by process, start -> end (peak): "
        + ", ".join(
            f"{a['name']} {a['rss_mib']:.0f} -> {b['rss_mib']:.0f} ({b['peak_mib']:.0f}) MiB"
            for a, b in zip(m["start"]["processes"], m["end"]["processes"])
        ),
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for name, ok, detail in result["checks"]:
        lines.append(f"| {name} | {'ok' if ok else 'FAILED'} | {detail} |")
    return "\n".join(lines)


def machine() -> dict:
    from hired.machine import cpu_name, vllm_version

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)
    except (ValueError, OSError, AttributeError):
        pass
    if vllm_version() is not None:
        info["vllm"] = vllm_version()
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    return info


# -------------------------------------------------------------------------------------------- the run


def run(args, tmp: Path) -> dict:
    print("building the tiny model and the requests", flush=True)
    path = build_model(tmp)
    counter = Counter(path)
    faults = fault_cases(counter, args.max_model_len)
    unknown = set(args.skip_fault) - {f.label for f in faults}
    if unknown:
        raise ValueError(
            f"no fault labelled {', '.join(sorted(unknown))}; faults: {', '.join(f.label for f in faults)}"
        )
    faults = [f for f in faults if f.label not in args.skip_fault]
    if args.requests <= len(faults):
        raise ValueError(f"--requests must be above {len(faults)} (every fault once and a good request)")
    goods = good_cases(args.requests - fault_share(args.requests, len(faults)), args.seed)
    edges = [f for f in faults if f.kind == "edge"]
    for case in goods + edges:
        case.count = counter.prompt_tokens(case)
    port = free_port()
    log_path = Path(args.server_log) if args.server_log else tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            server_command(path, port, args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            start = time.monotonic()
            wait_healthy(proc, port, args.startup_timeout)
            print(f"server up in {time.monotonic() - start:.0f} s (pid {proc.pid})", flush=True)
            mem_start = memory(proc.pid)
            for case in goods + edges:
                case.reference = send(port, case, path, args.max_tokens, args.timeout)
            print(f"{len(goods) + len(edges)} references sent alone; load: {args.requests} requests", flush=True)
            load = load_cases(goods, faults, args.requests, args.seed)
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                answers = list(pool.map(lambda c: send(port, c, path, args.max_tokens, args.timeout), load))
            load_s = time.perf_counter() - start
            end = {"alive": proc.poll() is None, "health": health(port), "final": None}
            if goods:
                end["final"] = send(port, goods[0], path, args.max_tokens, args.timeout)
                end["final"]["problem"] = problem(goods[0], end["final"])
            mem_end = memory(proc.pid)
        except RuntimeError as err:
            log.flush()
            tail = log_path.read_text()[-4000:]
            raise SystemExit(f"{err}\n--- server output (end) ---\n{tail}") from err
        finally:
            stop(proc)
    result = evaluate(goods, faults, load, answers, end)
    result.update(load_s=load_s, memory={"start": mem_start, "end": mem_end})
    result["answers"] = [
        {
            "label": c.label,
            "kind": c.kind,
            "stream": c.stream,
            "options": c.options,
            "expected_prompt_tokens": c.count,
            **{k: v for k, v in a.items()},
        }
        for c, a in zip(load, answers)
    ]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="hired-serving-") as tmp:
        tmp_path = Path(tmp)
        try:
            result = run(args, tmp_path)
        except ValueError as err:
            print(f"load.py: {err}", file=sys.stderr)
            return 2
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            ["python", "benchmarks/serving/load.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {**machine(), "load_average_before": load_before},
        "settings": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "max_model_len": args.max_model_len,
            "seed": args.seed,
            "model_entry": MODEL_ENTRY,
            "server_args": args.server_arg,
            "skipped_faults": args.skip_fault,
        },
        **result,
    }
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=dict) + "\n")
    failed = [name for name, ok, _ in result["checks"] if not ok]
    print(
        f"\n{len(result['checks']) - len(failed)} of {len(result['checks'])} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
