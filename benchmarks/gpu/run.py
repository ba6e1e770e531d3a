"""GPU figures in one command (issue 20). Run through ``benchmarks/gpu/run.sh``:

    bash benchmarks/gpu/run.sh [OUTDIR]              # one H100/H200, torch + transformers installed, no network
    bash benchmarks/gpu/run.sh --dry-run [OUTDIR]    # CPU, small models: the same steps in about a minute (CI)

Steps, in order, each with its own time limit; a failing step is logged and the next one runs:

1. ``env``: Python, torch (CUDA, cuDNN, the device), transformers and the other packages, hired (from
   ``src/``), the git commit, ``pip freeze`` -> ``versions.json``, ``pip-freeze.txt``;
2. ``nvidia-smi``: ``nvidia-smi`` and ``nvidia-smi -q`` -> ``nvidia-smi.txt``, ``nvidia-smi-q.txt``;
3. ``tests``: every test marked ``skipif(not torch.cuda.is_available())`` (found in ``tests/`` by reading
   the decorators) plus ``tests/test_core_*.py`` -> ``pytest.log``, ``pytest-junit.xml``; on a GPU a CUDA
   test that skips fails the step. Skipped, with a message, if pytest or hypothesis is missing;
4. ``bench-llava-next-7b-b1``, ``-b2``, ``-b4``: ``hired bench --arch llava-next-7b --random-weights`` at
   one batch size each (a time-out or a crash loses one batch size, not all), budgets 1.0, 0.4, 0.2, 0.1,
   float16, with the full model, the oracle and the reference attention path -> ``.json``, ``.md``,
   ``.png`` (no plot, with a message, if matplotlib is missing), ``.log``;
5. ``bench-llava-1.5-7b-b1``: the same for ``llava-1.5-7b`` at batch 1;
6. ``sync-check``: host-device synchronisations of one prefill forward, stock vs methods, batch 1 vs 4,
   under ``torch.cuda.set_sync_debug_mode("warn")`` -> ``sync-check.json`` (``sync_check.py``);
7. ``report``: the batch sizes of llava-next-7b in one table and plot (``bench-llava-next-7b.*``), the
   issue's goals checked against the rows, TTFT speed-ups next to the FLOP bound -> ``findings.md``.

``summary.md`` / ``summary.json`` list every step with its status, exit code, duration and files, and are
rewritten after each step; ``run.log`` has everything. The exit code is 0 only if every step is ``ok``
(``n/a``: not applicable in this mode, e.g. nvidia-smi in a dry run).

Time budget on one H100/H200 (estimate; no GPU run has happened yet). A 7B model with random weights is
built directly on the GPU in float16 (``hired.bench.build_arch``: parameters created and initialised under
``torch.device("cuda")``, no CPU copy, no float32), so a bench process costs ~15-20 s before its first
run (start, imports, 14 GB of weights, the tiny tokenizer). One run is one ``generate`` of 15 tokens:
preprocessing ~30 ms per image (PIL, 5 crops), vision tower ~10 ms per image (1.9 TFLOP), prefill ~80 ms
per image at full budget (~40 TFLOP, 2928 visual tokens) and ~20 ms at 20%, 14 decode steps at ~25 ms
(generate's per-step overhead dominates at this size): ~0.5 s at batch 1, ~0.8 s at batch 4 at full
budget. Per batch size 13 cases (full; hired, oracle and reference path at 4 budgets) x (1 warm-up + 5
runs) = 78 runs:

    env ~10 s | nvidia-smi ~2 s | tests ~40 s | llava-next b1 ~55 s, b2 ~65 s, b4 ~85 s
    | llava-1.5 b1 ~50 s | sync check ~20 s | report ~5 s                         ~330 s expected

The limits below give each step about 1.5 times its estimate and add up to 515 s, more than the 465 s
deadline: every step also gets at most the time left before the deadline (less a few seconds for the
report), so the whole run stays under 8 minutes whatever happens. If the runs turn out slower than
estimated, ``--runs 3`` saves about a third of each bench step. ``--tar PATH.tar.gz`` packs the folder
into one file for runners that bring back only a few files.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

GPU_BUDGETS = "1.0,0.4,0.2,0.1"
GPU_RUNS, GPU_WARMUP = 5, 1
GPU_DEADLINE = 465.0  # seconds for the whole run: 7 min 45 s
DRY_DEADLINE = 400.0  # a dry run takes about a minute; the limit is for very busy CI machines
RESERVE = 8.0  # kept back for the report and the summary

# per-step time limits (seconds): 7B models on a GPU, small models (dry run)
LIMITS = {
    "env": (40, 90),
    "nvidia-smi": (15, 20),
    "tests": (70, 120),
    "bench-b1": (90, 150),
    "bench-b2": (95, 150),
    "bench-b4": (115, 150),
    "bench-1.5": (60, 120),
    "sync-check": (30, 90),
}

OK, NA = "ok", "n/a"
GOOD = (OK, NA)

_VERSIONS = r"""
import importlib, importlib.metadata as md, json, platform, sys
out = {"python": platform.python_version(), "python_executable": sys.executable, "platform": platform.platform(),
       "packages": {}, "modules": {}}
for dist in ("torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "numpy", "pillow", "tqdm",
             "matplotlib", "pytest", "hypothesis", "accelerate", "triton"):
    try:
        out["packages"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        out["packages"][dist] = None
for mod in ("torch", "transformers", "tokenizers", "numpy", "PIL", "tqdm", "matplotlib.pyplot", "pytest", "hypothesis"):
    try:
        m = importlib.import_module(mod)
        if mod == "matplotlib.pyplot":
            import matplotlib; matplotlib.use("Agg")
        out["modules"][mod] = "ok"
    except Exception as err:
        out["modules"][mod] = f"{type(err).__name__}: {err}"
import torch
out["torch"] = torch.__version__
out["torch_cuda"] = torch.version.cuda
out["cuda_available"] = torch.cuda.is_available()
out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
out["devices"] = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                               "memory_gib": round(p.total_memory / 2**30, 1),
                               "multiprocessors": p.multi_processor_count})
import transformers
out["transformers"] = transformers.__version__
import hired
out["hired"] = hired.__version__
out["hired_file"] = hired.__file__
print(json.dumps(out))
"""


@dataclass
class Step:
    name: str
    title: str
    limit: float
    run: Callable[[Runner, Step, float], Outcome]
    files: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    status: str
    note: str = ""
    rc: int | None = None
    command: str | None = None


class Runner:
    def __init__(self, args):
        self.args = args
        self.small = args.arch == "small"  # the plan on small models (dry run, or a quick look at a GPU)
        self.cpu = args.device == "cpu"
        self.out: Path = args.out
        self.t0 = time.monotonic()
        self.started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.deadline = self.t0 + args.time_limit
        self.records: list[dict] = []
        self.versions: dict = {}
        self.child: subprocess.Popen | None = None
        self.findings = ""
        self.tmp = Path(tempfile.mkdtemp(prefix="hired-gpu-"))
        self.env = dict(os.environ)
        src = str(ROOT / "src")
        parts = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in parts if p != src])
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            self.env.setdefault(key, "1")
        if self.cpu:
            self.env.setdefault("OMP_NUM_THREADS", "1")  # small CPU jobs: one thread is faster on a busy machine
        self.log_file = open(self.out / "run.log", "a", buffering=1)

    @property
    def mode(self) -> str:
        if self.cpu:
            return "dry run on a CPU (small models)"
        return "GPU, small models" if self.small else "GPU"

    # ---------------------------------------------------------------------------------------- plumbing

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def call(self, cmd: list[str], log: Path, timeout: float, append: bool = False) -> tuple[int | None, str]:
        """Run ``cmd`` in the repository root, output to ``log``; ``(exit code or None on time-out, command)``."""
        text = " ".join(shlex.quote(str(c)) if "\n" not in str(c) else "'<script>'" for c in cmd)
        self.log(f"$ {text}")
        with open(log, "a" if append else "w") as f:
            f.write(f"$ {text}\n")
            f.flush()
            self.child = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=ROOT,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                rc = self.child.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                self._stop_child()
                f.write(f"\n[run.py] killed after the step's time limit of {timeout:.0f} s\n")
                rc = None
            finally:
                self.child = None
        return rc, text

    def _stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def python(self, *args) -> list[str]:
        return [sys.executable, *args]

    def have(self, module: str) -> bool:
        """Whether ``module`` imports (from the env step, else a look at the path)."""
        known = self.versions.get("modules", {}).get(module)
        if known is not None:
            return known == "ok"
        import importlib.util

        try:
            return importlib.util.find_spec(module.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False

    # ---------------------------------------------------------------------------------------- the steps

    def execute(self, steps: list[Step]) -> bool:
        only = set(self.args.only.split(",")) if self.args.only else None
        for step in steps:
            start = time.monotonic()
            timeout = min(step.limit, self.left() - (0 if step.name == "report" else RESERVE))
            if only is not None and step.name not in only:
                outcome = Outcome(NA, "not selected (--only)")
            elif step.name != "report" and timeout < 5:
                outcome = Outcome(
                    "skipped",
                    f"out of time: {max(self.left(), 0):.0f} s left of the {self.args.time_limit:.0f} s limit",
                )
            else:
                self.log(f"== {step.name}: {step.title}" + (f" (limit {timeout:.0f} s)" if step.limit else ""))
                try:
                    outcome = step.run(self, step, timeout)
                except Exception as err:  # a bug in a step must not stop the others
                    self.log_file.write(traceback.format_exc())
                    outcome = Outcome("failed", f"{type(err).__name__}: {err}")
            seconds = time.monotonic() - start
            files = [f for f in step.files if (self.out / f).is_file()]
            self.records.append(
                {
                    "name": step.name,
                    "title": step.title,
                    "status": outcome.status,
                    "rc": outcome.rc,
                    "seconds": round(seconds, 1),
                    "limit": round(max(timeout, 0), 1) if step.limit else None,
                    "note": outcome.note,
                    "files": files,
                    "command": outcome.command,
                }
            )
            self.log(
                f"-> {step.name}: {outcome.status} in {seconds:.1f} s"
                + (f" (exit code {outcome.rc})" if outcome.rc is not None else "")
                + (f": {outcome.note}" if outcome.note else "")
            )
            self.write_summary(done=False)
        self.write_summary(done=True)
        return all(r["status"] in GOOD for r in self.records)

    def write_summary(self, done: bool) -> None:
        total = time.monotonic() - self.t0
        ok = all(r["status"] in GOOD for r in self.records)
        summary = {
            "mode": self.mode,
            "started": self.started,
            "finished": done,
            "total_seconds": round(total, 1),
            "time_limit_seconds": self.args.time_limit,
            "ok": ok and done,
            "exit_code": (0 if ok else 1) if done else None,
            "out": str(self.out),
            "git_commit": self.versions.get("git_commit"),
            "steps": self.records,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        v = self.versions
        pk = v.get("packages", {})
        lines = [
            f"# GPU benchmark run: {self.mode}",
            "",
            f"Started {self.started}; {'finished' if done else 'still running'} after {total:.0f} s "
            f"(limit {self.args.time_limit:.0f} s). Result: "
            + ("**all steps ok**" if ok and done else ("**some steps did not succeed**" if done else "running"))
            + ".",
            "",
            f"Device: {', '.join(d['name'] for d in v.get('devices', [])) or 'no CUDA device'}. "
            f"Python {v.get('python', '?')}, torch {v.get('torch', pk.get('torch', '?'))} "
            f"(CUDA {v.get('torch_cuda')}), "
            f"transformers {v.get('transformers', pk.get('transformers', '?'))}, hired {v.get('hired', '?')}, "
            f"commit {v.get('git_commit', '?')}.",
            "",
            "| step | status | exit code | seconds | limit | note | files |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for r in self.records:
            note = r["note"].replace("|", "\\|").replace("\n", " ")
            limit = "-" if r["limit"] is None else f"{r['limit']:.0f}"
            lines.append(
                f"| {r['name']} | {r['status']} | {'-' if r['rc'] is None else r['rc']} | {r['seconds']:.1f} "
                f"| {limit} | {note} | {', '.join(r['files'])} |"
            )
        if self.findings:
            lines += ["", "## Findings", "", self.findings]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- env


def step_env(r: Runner, step: Step, timeout: float) -> Outcome:
    notes = []
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit = (commit + (" (with uncommitted changes)" if dirty else "")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    commit = commit or os.environ.get("HIRED_GIT_COMMIT") or "unknown (no git; set HIRED_GIT_COMMIT)"
    rc, cmd = r.call(r.python("-c", _VERSIONS), r.tmp / "versions.out", timeout)
    raw = (r.tmp / "versions.out").read_text().splitlines()
    versions = {}
    if rc == 0:
        versions = json.loads(raw[-1])
    else:
        (r.out / "versions.log").write_text("\n".join(raw) + "\n")
        notes.append("the version probe failed (versions.log)" if rc is not None else "the version probe timed out")
    versions["git_commit"] = commit
    versions["run_py"] = {"argv": sys.argv, "python": sys.executable, "pythonpath": r.env["PYTHONPATH"]}
    r.versions = versions
    (r.out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    prc, _ = r.call(
        r.python("-m", "pip", "freeze", "--disable-pip-version-check"),
        r.out / "pip-freeze.txt",
        min(20.0, max(timeout - 10, 5)),
    )
    if prc != 0:
        notes.append("pip freeze failed (pip-freeze.txt)")
    if rc != 0:
        return Outcome("failed", "; ".join(notes), rc, cmd)
    missing = [m for m, s in versions.get("modules", {}).items() if s != "ok"]
    if missing:
        notes.append("missing: " + ", ".join(missing))
    hired_file = versions.get("hired_file", "")
    if not str(hired_file).startswith(str(ROOT / "src")):
        return Outcome("failed", f"hired imports from {hired_file}, not this tree's src/", rc, cmd)
    if not r.cpu and not versions.get("cuda_available"):
        return Outcome("failed", "; ".join(["torch sees no CUDA device"] + notes), rc, cmd)
    return Outcome(OK, "; ".join(notes), rc, cmd)


def step_nvidia_smi(r: Runner, step: Step, timeout: float) -> Outcome:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        if r.cpu:
            return Outcome(NA, "nvidia-smi not found (none expected on a CPU run)")
        return Outcome("skipped", "nvidia-smi not found on PATH")
    rc, cmd = r.call([exe], r.out / "nvidia-smi.txt", timeout / 2)
    rc2, _ = r.call([exe, "-q"], r.out / "nvidia-smi-q.txt", timeout / 2)
    if rc == 0 and rc2 == 0:
        return Outcome(OK, "", rc, cmd)
    if r.cpu:  # a CPU machine may have the tool and no driver
        return Outcome(NA, f"nvidia-smi exited {rc} / {rc2} (no GPU expected on a CPU run)", rc, cmd)
    return Outcome("failed", f"nvidia-smi exited {rc}, nvidia-smi -q {rc2}", rc if rc else rc2, cmd)


# ------------------------------------------------------------------------------------------- tests


def cuda_tests(root: Path = ROOT) -> list[str]:
    """Node ids of the tests that skip without CUDA: functions (or classes, or whole modules through
    ``pytestmark``) with a ``skipif`` decorator whose condition or reason mentions CUDA."""

    def cuda_skip(decorators) -> bool:
        return any(
            isinstance(d, ast.Call)
            and getattr(d.func, "attr", getattr(d.func, "id", "")) == "skipif"
            and "cuda" in ast.unparse(d).lower()
            for d in decorators
        )

    ids = []
    for path in sorted((root / "tests").glob("test_*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        module_marks = [
            n.value
            for n in tree.body
            if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
        ]
        marks = [e for v in module_marks for e in (v.elts if isinstance(v, (ast.List, ast.Tuple)) else [v])]
        if cuda_skip(marks):
            ids.append(rel)
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                if cuda_skip(node.decorator_list):
                    ids.append(f"{rel}::{node.name}")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                if cuda_skip(node.decorator_list):
                    ids.append(f"{rel}::{node.name}")
                else:
                    ids += [
                        f"{rel}::{node.name}::{m.name}"
                        for m in node.body
                        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and m.name.startswith("test")
                        and cuda_skip(m.decorator_list)
                    ]
    return ids


def _junit(path: Path, cuda_ids: list[str]) -> dict:
    """Counts from pytest's JUnit XML: all tests, and the CUDA ones (passed / skipped / failed)."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    wanted = []
    for node_id in cuda_ids:
        parts = node_id.split("::")
        module = parts[0][:-3].replace("/", ".")
        wanted.append((module, parts[1:]))

    def is_cuda(case) -> bool:
        classname = case.get("classname", "")
        name = case.get("name", "").split("[")[0]
        for module, rest in wanted:
            if not rest:
                if classname == module or classname.startswith(module + "."):
                    return True
            elif len(rest) == 1 and ((classname == module and name == rest[0]) or classname == f"{module}.{rest[0]}"):
                return True
            elif len(rest) == 2 and classname == f"{module}.{rest[0]}" and name == rest[1]:
                return True
        return False

    def outcome(case) -> str:
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                return tag
        return "passed"

    counts = {
        "total": len(cases),
        "passed": 0,
        "failure": 0,
        "error": 0,
        "skipped": 0,
        "cuda_total": 0,
        "cuda_passed": 0,
        "cuda_skipped": 0,
        "cuda_failed": 0,
    }
    for case in cases:
        o = outcome(case)
        counts[o] += 1
        if is_cuda(case):
            counts["cuda_total"] += 1
            key = {"passed": "cuda_passed", "skipped": "cuda_skipped"}.get(o, "cuda_failed")
            counts[key] += 1
    return counts


def step_tests(r: Runner, step: Step, timeout: float) -> Outcome:
    missing = [m for m in ("pytest", "hypothesis") if not r.have(m)]
    if missing:
        # tests/conftest.py imports hypothesis: without it no test of this suite can even be collected
        return Outcome("skipped", f"{' and '.join(missing)} not installed: no tests run (the benches still run)")
    ids = cuda_tests()
    if not ids:
        return Outcome("failed", "found no CUDA tests (skipif on torch.cuda.is_available) in tests/")
    core = (
        ["tests/test_core_select.py"]
        if r.small
        else sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_core_*.py"))
    )
    junit = r.out / "pytest-junit.xml"
    cmd = r.python(
        "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-v", "-rs", f"--junitxml={junit}", *ids, *core
    )
    rc, text = r.call(cmd, r.out / "pytest.log", timeout)
    if rc is None:
        return Outcome("timeout", f"pytest killed after {timeout:.0f} s", None, text)
    if not junit.is_file():
        return Outcome("failed", "pytest wrote no JUnit XML", rc, text)
    c = _junit(junit, ids)
    note = (
        f"{c['total']} tests: {c['passed']} passed, {c['failure'] + c['error']} failed, {c['skipped']} skipped; "
        f"CUDA tests ({len(ids)} functions): {c['cuda_passed']} passed, {c['cuda_skipped']} skipped, "
        f"{c['cuda_failed']} failed"
    )
    if rc != 0:
        return Outcome("failed", note, rc, text)
    if c["cuda_total"] == 0:
        return Outcome("failed", note + "; no CUDA test was collected", rc, text)
    if c["cuda_skipped"]:
        if r.cpu:
            return Outcome(OK, note + " (skipping is expected on a CPU)", rc, text)
        return Outcome("failed", note + "; the CUDA tests must not skip on the GPU", rc, text)
    return Outcome(OK, note, rc, text)


# ------------------------------------------------------------------------------------------- bench


def bench_step(name: str, source: list[str], batch: int, prepare: Callable[..., list[str]] | None = None):
    """A step that runs ``hired bench`` at one batch size into ``<name>.json/.md/.png/.log``."""

    def run(r: Runner, step: Step, timeout: float) -> Outcome:
        started = time.monotonic()
        a = r.args
        src = list(source)
        log = r.out / f"{name}.log"
        log.write_text("")
        if prepare is not None:
            src = prepare(r, log, timeout)
        json_path = r.out / f"{name}.json"
        for suffix in (".json", ".md", ".png"):  # never report a previous run's file as this one's
            (r.out / f"{name}{suffix}").unlink(missing_ok=True)
        cmd = r.python(
            "-m",
            "hired.cli",
            "bench",
            *src,
            "--batch-sizes",
            str(batch),
            "--budgets",
            a.budgets,
            "--runs",
            str(a.runs),
            "--warmup",
            str(a.warmup),
            "--new-tokens",
            str(a.new_tokens),
            "--device",
            a.device,
            "--dtype",
            "float32" if r.cpu else "float16",
            "--json",
            json_path,
            "--markdown",
            r.out / f"{name}.md",
            "--no-progress",
        )
        if r.cpu:
            cmd += ["--threads", "1"]
        note = ""
        plot = r.have("matplotlib.pyplot")
        if plot:
            cmd += ["--plot", r.out / f"{name}.png"]
        else:
            note = "matplotlib missing: no plot"
            r.log(f"{name}: {note}")
        left = timeout - (time.monotonic() - started)
        rc, text = r.call(cmd, log, left, append=True)
        if rc is None:
            return Outcome("timeout", f"killed after {timeout:.0f} s", None, text)
        if rc != 0:
            return Outcome("failed", f"hired bench exited {rc} (see {name}.log)", rc, text)
        try:
            result = json.loads(json_path.read_text())
        except (OSError, ValueError) as err:
            return Outcome("failed", f"no readable JSON: {err}", rc, text)
        rows = result["rows"]
        budgets = sorted({row["budget"] for row in rows if row["kind"] == "method"}, reverse=True)
        note = f"{len(rows)} rows, budgets {', '.join(f'{b:g}' for b in budgets)}" + (f"; {note}" if note else "")
        missing = sorted({float(b) for b in a.budgets.split(",")} - set(budgets), reverse=True)
        if missing:
            return Outcome("failed", f"{note}; no rows for budgets {', '.join(f'{b:g}' for b in missing)}", rc, text)
        return Outcome(OK if plot else "degraded", note, rc, text)

    return run


def _tiny_llava(r: Runner, log: Path, timeout: float) -> list[str]:
    """Dry run: write hired.testing's LLaVA-1.5 to a temporary folder; ``hired bench --model`` loads it."""
    folder = r.tmp / "tiny-llava"
    code = f"from hired.testing import save_tiny; save_tiny({str(folder)!r}, 'llava')"
    rc, _ = r.call(r.python("-c", code), log, timeout / 2, append=True)
    if rc != 0:
        raise RuntimeError(f"could not write the tiny LLaVA-1.5 model (exit {rc}, see {log.name})")
    return ["--model", str(folder)]


# -------------------------------------------------------------------------------------- sync, report


def step_sync(r: Runner, step: Step, timeout: float) -> Outcome:
    path = r.out / "sync-check.json"
    path.unlink(missing_ok=True)
    if r.cpu:
        extra = ["--device", "cpu", "--arch", "tiny", "--batch-sizes", "1,2"]
    else:
        extra = ["--device", "cuda", "--arch", "small", "--batch-sizes", "1,4"]
    rc, text = r.call(r.python(HERE / "sync_check.py", *extra, "--json", path), r.out / "sync-check.log", timeout)
    if rc is None:
        return Outcome("timeout", f"killed after {timeout:.0f} s", None, text)
    if rc != 0 or not path.is_file():
        return Outcome("failed", f"sync_check.py exited {rc} (see sync-check.log)", rc, text)
    result = json.loads(path.read_text())
    if not result["counted"]:
        return Outcome(OK, "ran on the CPU: nothing to count", rc, text)
    extra_syncs = result["extra_syncs_per_added_image"]
    return Outcome(
        OK, "extra syncs per added image: " + ", ".join(f"{k} {v:g}" for k, v in extra_syncs.items()), rc, text
    )


def report_step(groups: dict[str, list[str]], archs: dict[str, str | None]):
    def run(r: Runner, step: Step, timeout: float) -> Outcome:
        sys.path[:0] = [p for p in (str(ROOT / "src"), str(HERE)) if p not in sys.path]
        import report  # benchmarks/gpu/report.py

        from hired.bench.archs import ARCHS

        notes = []
        plot = r.have("matplotlib.pyplot")
        benches = []
        for combined, parts in groups.items():
            found = [(p, report.load(r.out / f"{p}.json")) for p in parts]
            results = [res for _, res in found if res is not None]
            missing = [p for p, res in found if res is None]
            if missing:
                notes.append(f"{combined}: no results from {', '.join(missing)}")
            if not results:
                continue
            result = report.combine(results)
            report.write_tables(result, r.out / combined, plot)
            benches.append((combined, result, ARCHS.get(archs.get(combined) or "")))
        for name, arch in archs.items():
            if name in groups:
                continue
            result = report.load(r.out / f"{name}.json")
            if result is None:
                notes.append(f"no results from {name}")
            else:
                benches.append((name, result, ARCHS.get(arch or "")))
        sync = report.load(r.out / "sync-check.json")
        r.findings = report.findings(benches, sync, r.small or r.cpu)
        (r.out / "findings.md").write_text(r.findings)
        if not plot:
            notes.append("matplotlib missing: no combined plot")
        status = OK if plot else "degraded"
        return Outcome(status, "; ".join(notes))

    return run


# -------------------------------------------------------------------------------------------- plan


def plan(small: bool) -> list[Step]:
    g = 1 if small else 0
    limit = {k: v[g] for k, v in LIMITS.items()}

    def files(stem):
        return [f"{stem}{s}" for s in (".json", ".md", ".png", ".log")]

    steps = [
        Step(
            "env",
            "versions (Python, torch, CUDA, transformers, hired), git commit, pip freeze",
            limit["env"],
            step_env,
            ["versions.json", "pip-freeze.txt"],
        ),
        Step(
            "nvidia-smi",
            "nvidia-smi and nvidia-smi -q",
            limit["nvidia-smi"],
            step_nvidia_smi,
            ["nvidia-smi.txt", "nvidia-smi-q.txt"],
        ),
        Step(
            "tests",
            "CUDA tests (must not skip on a GPU) and tests/test_core_*.py",
            limit["tests"],
            step_tests,
            ["pytest.log", "pytest-junit.xml"],
        ),
    ]
    if small:
        groups = {"bench-small": ["bench-small-b1"]}
        archs = {"bench-small": "small", "bench-tiny-llava-b1": None}
        steps += [
            Step(
                "bench-small-b1",
                "hired bench --arch small (CPU), batch 1",
                limit["bench-b1"],
                bench_step("bench-small-b1", ["--arch", "small", "--random-weights"], 1),
                files("bench-small-b1"),
            ),
            Step(
                "bench-tiny-llava-b1",
                "hired bench on hired.testing's LLaVA-1.5 (CPU), batch 1",
                limit["bench-1.5"],
                bench_step("bench-tiny-llava-b1", [], 1, prepare=_tiny_llava),
                files("bench-tiny-llava-b1"),
            ),
        ]
    else:
        groups = {"bench-llava-next-7b": [f"bench-llava-next-7b-b{b}" for b in (1, 2, 4)]}
        archs = {"bench-llava-next-7b": "llava-next-7b", "bench-llava-1.5-7b-b1": "llava-1.5-7b"}
        for b in (1, 2, 4):
            name = f"bench-llava-next-7b-b{b}"
            steps.append(
                Step(
                    name,
                    f"hired bench --arch llava-next-7b --random-weights, batch {b}",
                    limit[f"bench-b{b}"],
                    bench_step(name, ["--arch", "llava-next-7b", "--random-weights"], b),
                    files(name),
                )
            )
        steps.append(
            Step(
                "bench-llava-1.5-7b-b1",
                "hired bench --arch llava-1.5-7b --random-weights, batch 1",
                limit["bench-1.5"],
                bench_step("bench-llava-1.5-7b-b1", ["--arch", "llava-1.5-7b", "--random-weights"], 1),
                files("bench-llava-1.5-7b-b1"),
            )
        )
    steps += [
        Step(
            "sync-check",
            "host-device syncs of one prefill forward, stock vs methods (set_sync_debug_mode)",
            limit["sync-check"],
            step_sync,
            ["sync-check.json", "sync-check.log"],
        ),
        Step(
            "report",
            "combined tables and plots, goals, speed-up vs the FLOP bound",
            0.0,
            report_step(groups, archs),
            [f"{c}{s}" for c in groups for s in (".json", ".md", ".png")] + ["findings.md"],
        ),
    ]
    return steps


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[Step]]:
    """The options, every default filled in for the mode, and the steps of its plan."""
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu/run.sh",
        description="GPU figures in one command: CUDA tests, hired bench on llava-next-7b and llava-1.5-7b "
        "(random weights), versions and nvidia-smi, into one folder, in under 8 minutes.",
    )
    p.add_argument("out", nargs="?", help="output folder (default $OUT, else gpu-results/)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU mode for CI (= --device cpu --arch small): the same steps on small models (hired bench "
        "--arch small, hired.testing's LLaVA-1.5), one budget, batch 1, one run",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu implies --arch small")
    p.add_argument(
        "--arch",
        choices=("7b", "small"),
        default="7b",
        help="7b: llava-next-7b and llava-1.5-7b (default); small: --arch small and hired.testing's "
        "LLaVA-1.5 (with --device cuda: a quick look at the script on a GPU)",
    )
    p.add_argument("--budgets", help=f"hired bench --budgets (default {GPU_BUDGETS}; small: 0.2)")
    p.add_argument("--runs", type=int, help=f"timed runs per row (default {GPU_RUNS}; small: 1)")
    p.add_argument("--warmup", type=int, help=f"warm-up runs per row (default {GPU_WARMUP}; small: 0)")
    p.add_argument("--new-tokens", type=int, help="greedy tokens per run (default 15, the paper's; small: 2)")
    p.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds for the whole run (default {GPU_DEADLINE:.0f}; small: {DRY_DEADLINE:.0f})",
    )
    p.add_argument("--only", help="comma-separated step names to run (the others are listed as n/a)")
    p.add_argument(
        "--tar",
        metavar="PATH.tar.gz",
        help="also pack the output folder into one archive (for runners that bring back few files)",
    )
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    if args.device == "cpu":
        args.arch = "small"
    dry = args.arch == "small"
    args.budgets = args.budgets or ("0.2" if dry else GPU_BUDGETS)
    args.runs = args.runs if args.runs is not None else (1 if dry else GPU_RUNS)
    args.warmup = args.warmup if args.warmup is not None else (0 if dry else GPU_WARMUP)
    args.new_tokens = args.new_tokens if args.new_tokens is not None else (2 if dry else 15)
    args.time_limit = args.time_limit or (DRY_DEADLINE if dry else GPU_DEADLINE)
    args.out = Path(args.out or os.environ.get("OUT") or "gpu-results").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = plan(dry)
    if args.only:
        unknown = set(args.only.split(",")) - {s.name for s in steps}
        if unknown:
            p.error(f"--only: unknown steps {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s in steps)}")
    return args, steps


def main(argv: list[str] | None = None) -> int:
    args, steps = parse_args(argv)
    for name in {f for step in steps for f in step.files} | {"summary.md", "summary.json", "versions.log"}:
        (args.out / name).unlink(missing_ok=True)  # only this script's own files: none may be from an older run
    (args.out / "run.log").write_text("")
    r = Runner(args)

    def on_signal(signum, _frame):  # the caller's own time-out: stop the child, keep the summary
        r.log(f"received signal {signum}: stopping")
        r._stop_child()
        r.write_summary(done=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    r.log(
        f"mode {r.mode}; output {args.out}; limit {args.time_limit:.0f} s; "
        f"budgets {args.budgets}, {args.warmup} warm-up + {args.runs} runs, {args.new_tokens} new tokens"
    )
    try:
        ok = r.execute(steps)
    finally:
        shutil.rmtree(r.tmp, ignore_errors=True)
    r.log(
        f"done in {time.monotonic() - r.t0:.1f} s: {'all steps ok' if ok else 'some steps did not succeed'}; "
        f"summary in {args.out / 'summary.md'}"
    )
    if args.tar:
        ok = _pack(args.out, Path(args.tar).resolve(), r) and ok
    print((args.out / "summary.md").read_text())
    return 0 if ok else 1


def _pack(folder: Path, archive: Path, r: Runner) -> bool:
    """Everything in ``folder`` into ``archive`` (``.tar.gz``), under the folder's name."""
    import tarfile

    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                if path.resolve() != archive:
                    tar.add(path, arcname=f"{folder.name}/{path.name}")
    except OSError as err:
        r.log(f"could not write {archive}: {err}")
        return False
    r.log(f"packed {folder} into {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return True


if __name__ == "__main__":
    sys.exit(main())
