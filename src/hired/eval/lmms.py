"""``hired_llava``: an lmms-eval model (LLaVA-NeXT / LLaVA-1.5 / LLaVA-OneVision / Qwen2.5-VL / Qwen3-VL / Qwen3.5 /
InternVL on transformers) with a ``hired`` method applied.

Registered with lmms-eval through the entry-point group ``lmms_eval.models`` (``pip install "hired-vlm[eval]"``)::

    python -m lmms_eval --model hired_llava \\
        --model_args pretrained=llava-hf/llava-v1.6-vicuna-7b-hf,method=hired,budget=0.2,alpha=0.5 \\
        --tasks textvqa_val --batch_size 4 --log_samples --output_path results/

``pretrained`` may be a LLaVA-OneVision checkpoint too (e.g. ``llava-hf/llava-onevision-qwen2-7b-ov-hf``;
needs torchvision: ``pip install "hired-vlm[eval,onevision]"``): the model class follows the config's
``model_type`` (``llava_next``, ``llava``, ``llava_onevision``, ``qwen2_5_vl``, ``internvl``, ...), so the same
model name serves every family::

    python -m lmms_eval --model hired_llava \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=hired,budget=0.2 \\
        --tasks textvqa_val --batch_size 4

OneVision's SigLIP tower has no [CLS] token: methods with ``score="auto"`` (HiRED, cls_topk, PruMerge,
VisionZip) rank patches by the attention they receive. A document with several images is encoded as
OneVision does for a multi-image prompt (one crop per image). Videos are not supported.

``method`` is any name of ``hired.list_methods()`` (default ``hired``), or ``none`` / ``full`` for the
stock model; every other key of ``--model_args`` that is not one of the model's own arguments below is
an option of that method (``budget``, ``alpha``, ``mapping``, ``seed``, ...; ``none`` means ``None``).
Adaptive methods (PruMerge, PruMerge+ with ``budget=none``) get their inputs from
``hired.prepare_inputs``, which writes each image's placeholders after its tokens were chosen.

Visual tokens are reported twice:

* per sample, in the ``token_counts`` field of lmms-eval's sample logs (``--log_samples``):
  ``input_tokens`` (prompt tokens, visual ones included), ``output_tokens``, ``visual_tokens`` (what the
  language model received for the sample's images) and ``visual_tokens_stock`` (what the stock model
  would have received);
* per task, in the ``throughput`` block of the results file: ``avg_visual_tokens_kept/<task>`` and
  ``avg_visual_tokens_stock/<task>``, the means over the task's samples (all ranks).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

import hired

MODEL_NAME = "hired_llava"
STOCK_METHODS = ("none", "full")
_GEN_KEYS = {"until", "max_new_tokens", "max_gen_toks", "temperature", "top_p", "num_beams", "do_sample"}
_DEFAULT_MAX_NEW_TOKENS = 1024


def lmms_eval_models():
    """Entry point of the ``lmms_eval.models`` group: the manifest of ``hired_llava``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.HiredLlava")


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus the visual tokens the language model received."""

    visual_tokens: int | None = None
    visual_tokens_stock: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        d = super().to_dict()
        if self.visual_tokens is not None:
            d["visual_tokens"] = self.visual_tokens
        if self.visual_tokens_stock is not None:
            d["visual_tokens_stock"] = self.visual_tokens_stock
        return d


def parse_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``--model_args`` values of ``method``'s options parsed by their declared types (``true``/``false``,
    ``none`` where allowed, ints, floats, literal choices); values that are not strings are kept."""
    from hired.methods.options import parse_method_options

    return parse_method_options(method, options)


def resolve_method(method: Any, options: dict[str, Any]) -> hired.Method | None:
    """The method a ``--model_args`` string asks for; ``None`` for the stock model.

    ``method`` is a registry name, ``none``/``full``, or a ``hired.Method`` instance (Python API).
    """
    if isinstance(method, hired.Method):
        if options:
            raise ValueError(f"options {sorted(options)} given next to a method instance; set them on the instance")
        chosen = method
    elif method is None or str(method).strip().lower() in STOCK_METHODS:
        if options:
            raise ValueError(
                f"method={method} runs the stock model and takes no options, got {', '.join(sorted(options))}"
            )
        return None
    else:
        chosen = hired.get_method(str(method), **parse_options(str(method), options))
    if getattr(chosen, "adaptive", False) and not hasattr(hired, "prepare_inputs"):
        raise ValueError(
            f"method {chosen.name!r} keeps an image-dependent number of tokens and needs hired.prepare_inputs, "
            "which this version of hired does not have"
        )
    return chosen


def _torch_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return value


def _load(pretrained: str, device: torch.device, dtype: torch.dtype, revision, attn_implementation):
    """``(model, processor)`` for a folder or hub id of a supported family (LLaVA-NeXT, LLaVA-1.5,
    LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL, Qwen3.5, InternVL) on ``device``, in eval mode; the classes come
    from the config's ``model_type`` through :mod:`hired.families` (:func:`hired.loading.model_class_for`)."""
    from transformers import AutoConfig

    from hired.loading import load_processor, model_class_for

    config = AutoConfig.from_pretrained(pretrained, revision=revision)
    _family, cls = model_class_for(config, f"{pretrained} ({MODEL_NAME})")
    processor = load_processor(pretrained, _family, revision=revision)  # OneVision without torchvision: one clear error
    kwargs = {"revision": revision, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(pretrained, **kwargs).to(device).eval()
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at the same column
    return model, processor


class HiredLlava(lmms):
    """LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL or Qwen3.5 with visual tokens dropped by a ``hired``
    method, for lmms-eval.

    Args (``--model_args key=value,...``): ``pretrained`` (folder or hub id), ``method`` (registry name,
    default ``hired``; ``none``/``full`` = stock), ``device`` (default ``cuda`` when available; one GPU
    per process under ``accelerate launch``), ``dtype`` (``auto`` = float16 on CUDA, float32 on CPU),
    ``batch_size``, ``attn_implementation``, ``revision``, ``max_new_tokens`` (used when a task does not
    set it; default 1024); anything else is an option of the method.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: Any = "hired",
        device: str | None = None,
        dtype: Any = "auto",
        batch_size: Any = 1,
        max_batch_size: Any = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        max_new_tokens: int = _DEFAULT_MAX_NEW_TOKENS,
        **method_options: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.default_max_new_tokens = int(max_new_tokens)
        self.method = resolve_method(method, method_options)

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            # data parallel: lmms-eval shards the documents by rank; each process holds a full model copy
            self._device = accelerator.device
        elif device:
            self._device = torch.device(device)
        else:
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes

        self.pretrained = str(pretrained)
        self._model, self.processor = _load(
            self.pretrained, self._device, _torch_dtype(dtype, self._device), revision, attn_implementation
        )
        from hired.families import family_of

        self.family = family_of(self._model)[1]
        self._nest_images = self.family.nests_images  # multi-image prompts: one image list per text
        if self.method is not None:
            hired.apply(self._model, self.processor, self.method)
        self.image_token = self.processor.image_token
        self.image_token_id = self.processor.image_token_id
        if self._rank == 0:
            what = "stock model" if self.method is None else repr(self.method)
            logger.info(f"{MODEL_NAME}: {self.pretrained} on {self._device}, {what}, world size {self._world_size}")

    # ------------------------------------------------------------------------------------------ properties

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    # -------------------------------------------------------------------------------------------- prompts

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id) -> list:
        """The images of one document, as RGB PIL images (videos and audio are not supported)."""
        from PIL import Image

        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        images = []
        for v in visuals:
            if v is None:
                continue
            if not isinstance(v, Image.Image):
                raise ValueError(f"{MODEL_NAME} takes images only; task {task!r} gave a {type(v).__name__}")
            images.append(v.convert("RGB") if v.mode != "RGB" else v)
        return images

    def build_prompt(self, context: str, num_images: int) -> str:
        """``context`` as a user turn with one ``<image>`` per image (unless it already has them).

        Uses the processor's chat template when it has one, else ``USER: <image>\\n... ASSISTANT:`` with the
        family's placeholder (Qwen2.5-VL wraps it in ``<|vision_start|>`` / ``<|vision_end|>``).
        """
        has_tokens = self.image_token in context
        if has_tokens and context.count(self.image_token) != num_images:
            raise ValueError(
                f"the prompt holds {context.count(self.image_token)} {self.image_token} tokens for {num_images} images"
            )
        if getattr(self.processor, "chat_template", None):
            content = [] if has_tokens else [{"type": "image"} for _ in range(num_images)]
            content.append({"type": "text", "text": context})
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        prefix = "" if has_tokens else f"{self.family.image_placeholder(self.processor)}\n" * num_images
        return f"USER: {prefix}{context} ASSISTANT:"

    def _encode(
        self,
        texts: list[str],
        images: list,
        query_text: list[str] | None = None,
        per_row: list[int] | None = None,
    ) -> dict:
        """Processor output on the model's device; ``hired.prepare_inputs`` for adaptive methods, and for
        query-aware ones (CDPruner) when ``query_text`` (the prompts without what is scored) is given, so
        the selection never reads the continuation being scored.

        ``per_row``: images of each text. LLaVA-OneVision's processor gets the images as one list per
        text, so a text with several images is a multi-image prompt (one crop per image, as the model
        was trained), not several anyres images."""
        if images and per_row is not None and self._nest_images:
            if sum(per_row) != len(images):
                raise ValueError(f"{len(images)} images for rows holding {sum(per_row)}")
            starts = [sum(per_row[:i]) for i in range(len(per_row))]
            images = [images[s : s + n] for s, n in zip(starts, per_row)]
        kwargs = {"text": texts, "images": images or None, "return_tensors": "pt", "padding": True}
        query_aware = self.method is not None and getattr(self.method, "query_aware", False) and query_text is not None
        if self.method is not None and (getattr(self.method, "adaptive", False) or query_aware):
            if query_aware:
                kwargs["query_text"] = query_text
            inputs = hired.prepare_inputs(self._model, self.processor, **kwargs)
        else:
            inputs = self.processor(**kwargs)
        inputs = {k: (v.to(self._device) if torch.is_tensor(v) else v) for k, v in dict(inputs).items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    def _visual_counts(self, input_ids: torch.Tensor, images_per_row: list[int]) -> list[tuple[int, int]]:
        """``(received, stock)`` visual tokens of every row of the batch just run.

        With a method applied, from ``hired.last_selection`` (checked against the placeholders in
        ``input_ids``); for the stock model, the placeholders themselves.
        """
        placeholders = (input_ids == self.image_token_id).sum(dim=1).tolist()
        if self.method is None or sum(images_per_row) == 0:
            return [(int(n), int(n)) for n in placeholders]
        sels = hired.last_selection(self._model)
        if len(sels) != sum(images_per_row):
            raise RuntimeError(f"{len(sels)} image selections for {sum(images_per_row)} images in the batch")
        out, start = [], 0
        for n_img, n_placeholders in zip(images_per_row, placeholders):
            mine = sels[start : start + n_img]
            start += n_img
            kept = sum(s.num_tokens for s in mine)
            if kept != n_placeholders:
                raise RuntimeError(f"the model received {kept} visual tokens where the prompt holds {n_placeholders}")
            out.append((kept, sum(s.num_tokens_stock for s in mine)))
        return out

    # -------------------------------------------------------------------------------------------- batching

    def _batches(self, requests: list[Instance], key_fn, length_fn) -> list[list[int]]:
        """Request indices in batches of ``batch_size``: same ``key_fn`` per batch, longest prompts first."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(key_fn(req), []).append(i)
        batches = []
        for idx in groups.values():
            idx.sort(key=lambda i: (-length_fn(requests[i]), i))
            batches.extend(idx[s : s + self.batch_size] for s in range(0, len(idx), self.batch_size))
        return batches

    def _prompt_length(self, req: Instance) -> int:
        return len(self.tokenizer(req.args[0], add_special_tokens=False)["input_ids"])

    # ---------------------------------------------------------------------------------------- lmms API

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy (or sampled, when a task asks) answers, batched with left padding; see the module doc."""
        results: list[GenerationResult | None] = [None] * len(requests)
        stats = _TaskStats()

        def key(req):
            return req.args[4] + "\x00" + json.dumps(req.args[1], sort_keys=True, default=str)

        batches = self._batches(requests, key, self._prompt_length)
        pbar = tqdm(total=len(requests), disable=self._rank != 0, desc=f"{MODEL_NAME} generating")
        for batch in batches:
            reqs = [requests[i] for i in batch]
            gen_kwargs = dict(reqs[0].args[1] or {})
            task = reqs[0].args[4]
            texts, images, per_row = [], [], []
            for req in reqs:
                context, _, doc_to_visual, doc_id, task_name, split = req.args[:6]
                imgs = self._visuals(doc_to_visual, task_name, split, doc_id)
                texts.append(self.build_prompt(context, len(imgs)))
                images.extend(imgs)
                per_row.append(len(imgs))
            inputs = self._encode(texts, images, per_row=per_row)
            until, generate_kwargs = self._generation_kwargs(gen_kwargs)
            start = time.perf_counter()
            with torch.inference_mode():
                out = self._model.generate(**inputs, **generate_kwargs)
            elapsed = time.perf_counter() - start
            counts = self._visual_counts(inputs["input_ids"], per_row)
            prompt_len = inputs["input_ids"].shape[1]
            prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
            new_tokens = out[:, prompt_len:]
            n_generated = []
            for row, (i, req) in enumerate(zip(batch, reqs)):
                ids = new_tokens[row].tolist()
                n_out = _generated_length(ids, self.eot_token_id, self.tokenizer.pad_token_id)
                n_generated.append(n_out)
                text = self.tokenizer.decode(ids[:n_out], skip_special_tokens=True)
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                received, stock = counts[row]
                tc = VisualTokenCounts(
                    input_tokens=int(prompt_tokens[row]),
                    output_tokens=n_out,
                    visual_tokens=received,
                    visual_tokens_stock=stock,
                )
                results[i] = GenerationResult(text=text.strip(), token_counts=tc)
                if not req.metadata.get("__padding_only__"):
                    stats.add(task, received, stock)
            stats.add_time(task, elapsed, sum(n_generated))
            pbar.update(len(reqs))
        pbar.close()
        stats.log(self)
        return results

    def _generation_kwargs(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """``(stop strings, model.generate kwargs)`` from a task's ``generation_kwargs``."""
        unknown = sorted(set(gen_kwargs) - _GEN_KEYS)
        if unknown:
            logger.warning(f"{MODEL_NAME}: ignoring generation_kwargs {unknown}")
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        max_new = gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks", self.default_max_new_tokens))
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        pad = self.tokenizer.pad_token_id
        kwargs = {
            "max_new_tokens": int(max_new),
            "do_sample": do_sample,
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "pad_token_id": self.eot_token_id if pad is None else pad,
            "eos_token_id": self.eot_token_id,
        }
        stops = [u for u in until if u]
        if stops:  # stop each row at its first stop string instead of generating to the limit
            kwargs["stop_strings"] = stops
            kwargs["tokenizer"] = self.tokenizer
        if do_sample:
            kwargs["temperature"] = temperature if temperature > 0 else 1.0
            if gen_kwargs.get("top_p") is not None:
                kwargs["top_p"] = float(gen_kwargs["top_p"])
        return list(until), kwargs

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation after its context, and whether it is the greedy one."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        stats = _TaskStats()
        batches = self._batches(requests, lambda r: r.args[4], self._prompt_length)
        pbar = tqdm(total=len(requests), disable=self._rank != 0, desc=f"{MODEL_NAME} scoring")
        for batch in batches:
            reqs = [requests[i] for i in batch]
            task = reqs[0].args[4]
            prompts, fulls, images, per_row = [], [], [], []
            for req in reqs:
                context, continuation, doc_to_visual, doc_id, task_name, split = req.args[:6]
                doc = self.task_dict[task_name][split][doc_id]
                cont = continuation if isinstance(continuation, str) else continuation(doc)
                imgs = self._visuals(doc_to_visual, task_name, split, doc_id)
                prompt = self.build_prompt(context, len(imgs))
                prompts.append(prompt)
                fulls.append(prompt + cont)
                images.extend(imgs)
                per_row.append(len(imgs))
            inputs = self._encode(fulls, images, query_text=prompts, per_row=per_row)
            prompt_only = self.tokenizer(prompts, add_special_tokens=True, padding=False)["input_ids"]
            full_only = self.tokenizer(fulls, add_special_tokens=True, padding=False)["input_ids"]
            start = time.perf_counter()
            with torch.inference_mode():
                logits = self._model(**inputs).logits
            stats.add_time(task, time.perf_counter() - start, 0)
            counts = self._visual_counts(inputs["input_ids"], per_row)
            ids = inputs["input_ids"]
            for row, (i, req) in enumerate(zip(batch, reqs)):
                n_cont = len(full_only[row]) - len(prompt_only[row])
                if n_cont < 1:
                    raise ValueError(f"empty continuation for document {req.args[3]} of task {task}")
                target = ids[row, -n_cont:]
                logprobs = torch.log_softmax(logits[row, -n_cont - 1 : -1].float(), dim=-1)
                total = logprobs.gather(1, target[:, None]).sum().item()
                greedy = bool((logprobs.argmax(dim=-1) == target).all())
                results[i] = (float(total), greedy)
                if not req.metadata.get("__padding_only__"):
                    stats.add(task, *counts[row])
            pbar.update(len(reqs))
        pbar.close()
        stats.log(self)
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} does not implement multi-round generation")


def _generated_length(ids: list[int], eos_id: int | None, pad_id: int | None) -> int:
    """Tokens generated for one row: up to and including the first end-of-sequence, without padding."""
    for n, t in enumerate(ids):
        if t == eos_id:
            return n + 1
    n = len(ids)
    while n and pad_id is not None and ids[n - 1] == pad_id:
        n -= 1
    return n


class _TaskStats:
    """Per-task sums of visual tokens, generation time and generated tokens over one lmms API call."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}  # task -> [samples, kept, stock, seconds, new tokens]

    def _row(self, task: str) -> list[float]:
        return self.sums.setdefault(task, [0, 0, 0, 0.0, 0])

    def add(self, task: str, kept: int, stock: int) -> None:
        row = self._row(task)
        row[0] += 1
        row[1] += kept
        row[2] += stock

    def add_time(self, task: str, seconds: float, new_tokens: int) -> None:
        row = self._row(task)
        row[3] += seconds
        row[4] += new_tokens

    def gathered(self, lm: HiredLlava) -> dict[str, list[float]]:
        """The sums over every rank (lmms-eval calls the model on all ranks at once)."""
        import torch.distributed as dist

        if lm.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return self.sums
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.sums)
        total: dict[str, list[float]] = {}
        for part in parts:
            for task, row in (part or {}).items():
                acc = total.setdefault(task, [0, 0, 0, 0.0, 0])
                for j, v in enumerate(row):
                    acc[j] += v
        return total

    def log(self, lm: HiredLlava) -> None:
        """One lmms-eval throughput record per task; its mean visual-token counts land in the results file."""
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        sums = self.gathered(lm)
        if lm.rank != 0:
            return
        for task, (n, kept, stock, seconds, new_tokens) in sorted(sums.items()):
            extra = {}
            if n:
                extra = {f"visual_tokens_kept/{task}": kept / n, f"visual_tokens_stock/{task}": stock / n}
            speed = new_tokens / seconds if seconds > 0 else 0.0
            log_metrics(
                total_elapsed_time=seconds,
                total_gen_tokens=int(new_tokens),
                avg_speed=speed,
                additional_metrics=extra,
            )
