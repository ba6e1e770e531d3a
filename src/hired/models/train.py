"""Train hired-tiny's language side on both synthetic question families, with all visual tokens.

    python -m hired.models.train                  # the packaged weights (src/hired/models/hired_tiny/)
    python -m hired.models.train --out DIR --checkpoints CKPT      # elsewhere, a copy at every evaluation

The DINOv2 tower is frozen, so its features are computed once per training image (all partitions,
``vision_feature_layer`` output without [CLS], fp16) and cached on disk under ``hired.models.dinov2.cache_dir()``.
Each step then runs only the projector, LLaVA-NeXT's own ``pack_image_features`` (unpadding, newline
tokens) and the decoder, with a loss on the answer tokens and the end-of-sequence token.

The training set mixes the two families (:func:`hired.models.dense.combine`): ``--images`` scenes of
:mod:`hired.models.task` (small shapes on photos) and ``--dense-images`` scenes of :mod:`hired.models.dense`
(one table of small shapes or coloured cells in one sub-image), with ``--questions`` and ``--dense-questions``
questions each, shuffled together; the held-out set mixes them likewise and is reported per family.

A small decoder trained from scratch on the answers alone learns the answer priors and then stalls
(it never starts reading the image within an hour of CPU time). Three things make it read:

- the projector trains on standardised tower features (DINOv2's channels differ widely in scale and share
  a large common component); the statistics are folded into its first layer when the weights are written,
  so the shipped model is a stock ``LlavaNextForConditionalGeneration`` on raw features;
- auxiliary per-patch labels (which shape and colour covers each patch, and on the full image its
  quadrant; :func:`patch_labels`; for the dense family which table item covers it, its row, column, shape
  or colour: :func:`hired.models.dense.patch_labels`, the joint columns of ``dense.LABELS``) read by linear
  probes from the projector's output (all but row and column, which a single patch cannot know) and from
  the visual tokens entering the last decoder layer, and a per-token "what the question is about" label
  (:func:`relevance`, :func:`hired.models.dense.relevance`) read half-way up the decoder;
- the first head of the last layer is pulled, at the position that predicts the answer, onto the tokens
  the question is about.

The probes are thrown away; only the answers' loss shapes what the model outputs. All of it is training
only: dropping is applied at inference, training-free, as in the paper. Everything is seeded. The
learning rate rises linearly over ``--warmup`` steps, stays constant, and falls linearly to 0 over the last
``--decay`` share of the steps (:func:`rate_factor`; default a quarter, which is what lifts the held-out
accuracy at the end). With ``--decay 0`` the rate is constant after the warm-up, so the checkpoint written
at step N of a longer run equals the result of ``--steps N``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hired.models import dense, task, tiny_vlm
from hired.models.dinov2 import cache_dir


def encode_split(model, processor, split: task.Split, cache: Path | None, batch: int = 8):
    """Per image: ``(features (P, T, C) fp16, image_size (h, w), number of <image> tokens)``, cached."""
    from tqdm.auto import tqdm

    if cache is not None and cache.is_file():
        return torch.load(cache)
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    out = []
    ids = range(len(split.scenes))
    for start in tqdm(range(0, len(ids), batch), desc="encoding (frozen DINOv2)", unit="batch"):
        images = [split.image(i) for i in ids[start : start + batch]]
        pixels, sizes, counts = [], [], []
        for img in images:
            inputs = processor(images=img, text=tiny_vlm.prompt("x"), return_tensors="pt")
            pixels.append(inputs["pixel_values"][0])
            sizes.append(tuple(int(v) for v in inputs["image_sizes"][0]))
            counts.append(int((inputs["input_ids"] == model.config.image_token_id).sum()))
        with torch.no_grad():
            hidden = tower(torch.cat(pixels), output_hidden_states=True).hidden_states[layer][:, 1:]
        for feats, size, count in zip(torch.split(hidden, [len(p) for p in pixels]), sizes, counts):
            out.append((feats.half().clone(), size, count))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, cache)
    return out


SUB_COVER = 0.3  # a patch shows a shape when the shape covers this share of it (sub-images)
FULL_COVER = 0.15  # the same on the full image, where a shape is about one patch


def patch_labels(processor, scene: task.Scene) -> torch.Tensor:
    """``(P, T, 3)`` long: per patch of every partition, the pasted shape that covers it (0 = none, else
    1 + index in ``task.SHAPES``), its colour (0 = none, else 1 + index in ``task.COLOURS``) and, for the
    full-image partition only, the image quadrant the patch lies in (1 + index in ``task.QUADRANTS``;
    -100 = not supervised, on sub-images).

    Each shape is drawn alone as a white mask and sent through the same image processor as the photo, so the
    labels follow anyres' resizing, padding and cropping exactly; a patch belongs to the shape covering
    most of it, if that shape covers at least 30% of it (15% on the full image).
    """
    from PIL import Image

    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    h, w = scene.size
    covers = []
    for item in scene.shapes:
        mask = Image.new("RGB", (w, h), (0, 0, 0))
        task.draw_shape(mask, item, fill=(255, 255, 255), outline=None)
        pixels = ip(mask, return_tensors="pt")["pixel_values"][0]  # (P, 3, crop, crop)
        plane = (pixels * std + mean)[:, :1]
        covers.append(F.avg_pool2d(plane, tiny_vlm.PATCH).flatten(1))  # (P, T)
    best, which = torch.stack(covers).max(0)
    labels = torch.zeros(*best.shape, 3, dtype=torch.long)
    # a shape spans about one patch of the downscaled full image, often split over several: a lower bar there
    threshold = torch.full((best.shape[0], 1), SUB_COVER)
    threshold[0] = FULL_COVER
    for i, item in enumerate(scene.shapes):
        hit = (which == i) & (best >= threshold)
        labels[..., 0][hit] = task.SHAPES.index(item.shape) + 1
        labels[..., 1][hit] = list(task.COLOURS).index(item.colour) + 1
    side = int(round(best.shape[1] ** 0.5))
    r, c = torch.div(torch.arange(best.shape[1]), side, rounding_mode="floor"), torch.arange(best.shape[1]) % side
    labels[..., 2] = -100
    labels[0, :, 2] = 1 + 2 * (r >= side // 2).long() + (c >= side // 2).long()
    return labels


def tokenize(processor, split: task.Split, encoded) -> list[tuple[list[int], int]]:
    """Per question: ``(input_ids, prompt_length)``; the answer and ``</s>`` follow the prompt."""
    tok = processor.tokenizer
    rows = []
    for q in split.questions:
        count = encoded[q.image][2]
        text = tiny_vlm.prompt(q.question).replace(tiny_vlm.IMAGE_TOKEN, tiny_vlm.IMAGE_TOKEN * count)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        answer = tok(" " + q.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((ids + answer, len(ids)))
    return rows


def feature_statistics(encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation ``(C,)`` of the cached tower features of every patch."""
    flat = torch.cat([f.float().flatten(0, 1) for f, _, _ in encoded])
    return flat.mean(0), flat.std(0).clamp(min=1e-3)


def standardise(encoded, mean: torch.Tensor, std: torch.Tensor):
    """The cached features with every channel standardised (what the projector is trained on)."""
    return [(((f.float() - mean) / std).half(), size, count) for f, size, count in encoded]


@torch.no_grad()
def fold_standardisation(projector, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold ``x -> (x - mean) / std`` into the projector's first linear layer, in place, so the stock
    ``LlavaNextMultiModalProjector`` computes on raw tower features what training computed on standardised
    ones: ``W (x - m) / s + b = (W / s) x + (b - W (m / s))``."""
    linear = projector.linear_1
    linear.bias -= linear.weight @ (mean / std)
    linear.weight /= std


def relevance(question: task.Question, labels: torch.Tensor) -> torch.Tensor:
    """``(...)`` float: 1 on the patches a question is about, from :func:`patch_labels` rows ``(..., 3)``
    (per partition ``(P, T, 3)``, or packed ``(N, 3)``; rows of -100, such as newlines, are never marked).

    Colour and quadrant questions: the patches of the named shape; presence: those of the named shape in
    the named colour (none when the answer is no); count: the patches of every shape.
    """
    words = question.question.rstrip("?").split()
    shape = next((task.SHAPES.index(w) + 1 for w in words if w in task.SHAPES), None)
    colour = next((list(task.COLOURS).index(w) + 1 for w in words if w in task.COLOURS), None)
    hit = labels[..., 0] > 0
    if shape is not None:
        hit &= labels[..., 0] == shape
    if colour is not None:
        hit &= labels[..., 1] == colour
    return hit.float()


def joint_labels(processor, scene) -> torch.Tensor:
    """``(P, T, len(dense.LABELS))`` per-patch labels of a scene of either family: the dense family's own
    (:func:`hired.models.dense.patch_labels`), the first family's (:func:`patch_labels`) padded with zeros
    (no table item) by :func:`hired.models.dense.pad_labels`."""
    if isinstance(scene, dense.Scene):
        return dense.patch_labels(scene)
    return dense.pad_labels(patch_labels(processor, scene))


def question_marks(split: task.Split, labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per question of ``split`` (either family), ``(P, T)`` float: 1 on the patches it is about
    (:func:`relevance` on the first family's labels, :func:`hired.models.dense.relevance` on dense scenes)."""
    coverage: dict[int, object] = {}
    out = []
    for q in split.questions:
        scene = split.scenes[q.image]
        if isinstance(scene, dense.Scene):
            if q.image not in coverage:
                coverage[q.image] = dense.item_coverage(scene)
            out.append(dense.relevance(q, scene, coverage[q.image]))
        else:
            out.append(relevance(q, labels[q.image]))
    return out


def split_key(split: task.Split) -> str:
    """A short digest of a split's scenes (what the cached tower features depend on), with the crop size."""
    return hashlib.sha1(f"{tiny_vlm.CROP}:{split.scenes!r}".encode()).hexdigest()[:16]


def family(kind: str) -> str:
    """``"dense"`` for the kinds of :mod:`hired.models.dense`, else ``"first"``."""
    return "dense" if kind in dense.KINDS else "first"


@dataclasses.dataclass
class Auxiliary:
    """The training-only heads, thrown away afterwards (see :func:`train`).

    ``patch``: a linear probe on the projector's output, ``sum(dense.LABEL_CLASSES)`` logits per visual
    token (the joint label columns of :func:`joint_labels`; row and column are not asked of it): it teaches the projector to say what each patch shows before
    the decoder has learnt to look. ``relevance``: one logit per visual token on the decoder's hidden state
    after ``layer`` layers, trained to mark the patches the question is about (:func:`relevance`): it
    teaches the first layers to read the question into the visual tokens; ``content``: the same per-patch
    labels read from the visual tokens entering the last layer, so that what the decoder writes into them
    does not bury what they show, so the last ones only have to
    gather the marked tokens. The first head of the last layer is also pulled, at the position that
    predicts the answer, onto the marked tokens (this needs eager attention). ``labels``: per training
    image, :func:`joint_labels`; ``marks``: per training question, :func:`question_marks`.
    """

    patch: torch.nn.Module
    content: torch.nn.Module
    relevance: torch.nn.Module
    layer: int
    labels: list[torch.Tensor]
    marks: list[torch.Tensor]
    pos_weight: float = 10.0

    def parameters(self):
        return [*self.patch.parameters(), *self.content.parameters(), *self.relevance.parameters()]


LOCAL = tuple(j for j, name in enumerate(dense.LABELS) if name not in ("row", "column"))  # what one patch shows


def _label_loss(logits: torch.Tensor, target: torch.Tensor, columns=None) -> torch.Tensor:
    """Summed cross-entropy of ``(N, sum(dense.LABEL_CLASSES))`` logits against ``(N, len(dense.LABELS))``
    :func:`joint_labels` rows, over ``columns`` (default: all)."""
    parts = logits.split(list(dense.LABEL_CLASSES), -1)
    columns = range(len(parts)) if columns is None else columns
    return sum(F.cross_entropy(parts[j], target[:, j], ignore_index=-100) for j in columns)


def batch_loss(model, encoded, split, rows, index: list[int], aux: Auxiliary | None = None):
    """Mean cross-entropy over answer tokens, per question whether every answer token was the argmax, and
    (with ``aux``) the auxiliary losses by name."""
    m = model.model
    qs = [split.questions[i] for i in index]
    feats = [encoded[q.image][0].float() for q in qs]
    sizes = torch.tensor([encoded[q.image][1] for q in qs])
    projected = m.multi_modal_projector(torch.cat(feats))
    losses: dict[str, torch.Tensor] = {}
    if aux is not None:
        target = torch.cat([aux.labels[q.image] for q in qs]).flatten(0, 1)  # (sum P * T, len(dense.LABELS))
        # the probes read the normalised tokens, so they cannot ask for ever larger visual embeddings
        logits = aux.patch(F.layer_norm(projected.flatten(0, 1), projected.shape[-1:]))
        losses["patch"] = _label_loss(logits, target, LOCAL)
    projected = torch.split(projected, [len(f) for f in feats])
    packed, _ = m.pack_image_features(projected, sizes, "default", image_newline=m.image_newline)
    packed = torch.cat(list(packed))
    length = max(len(rows[i][0]) for i in index)
    pad = model.config.text_config.pad_token_id
    ids = torch.full((len(index), length), pad)
    mask = torch.zeros((len(index), length), dtype=torch.long)
    target = torch.full((len(index), length), -100)
    for b, i in enumerate(index):
        seq, plen = rows[i]
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        target[b, plen - 1 : len(seq) - 1] = torch.tensor(seq[plen:])  # position t predicts token t + 1
    embeds = m.get_input_embeddings()(ids)
    image_mask = ids == model.config.image_token_id
    if int(image_mask.sum()) != len(packed):
        raise RuntimeError(f"{int(image_mask.sum())} <image> tokens for {len(packed)} image features")
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds), packed.to(embeds.dtype))
    out = m.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        output_hidden_states=aux is not None,
        output_attentions=aux is not None,
    )
    hidden = out.last_hidden_state
    if aux is not None:
        # the labels and the relevance marks (last column) go through LLaVA-NeXT's own packing (newline rows
        # all -100), so they line up with the visual tokens exactly
        width = len(dense.LABELS) + 1
        joint = [torch.cat([aux.labels[q.image].float(), aux.marks[i][..., None]], -1) for q, i in zip(qs, index)]
        packed_labels, _ = m.pack_image_features(joint, sizes, "default", image_newline=torch.full((width,), -100.0))
        packed_labels = torch.cat(list(packed_labels))
        marks = packed_labels[:, -1].clamp(min=0)
        packed_labels = packed_labels[:, :-1].long()
        valid = packed_labels[:, 0] != -100
        state = out.hidden_states[aux.layer][image_mask]
        logit = aux.relevance(F.layer_norm(state, state.shape[-1:])).squeeze(-1)
        state = out.hidden_states[-2][image_mask]
        losses["content"] = _label_loss(aux.content(F.layer_norm(state, state.shape[-1:])), packed_labels)
        losses["relevance"] = F.binary_cross_entropy_with_logits(
            logit[valid], marks[valid], pos_weight=torch.tensor(aux.pos_weight)
        )
        where = torch.zeros(ids.shape)
        where[image_mask] = marks
        at = torch.tensor([rows[i][1] - 1 for i in index])
        weights = out.attentions[-1][torch.arange(len(index)), 0, at]  # (B, S): answer position, head 0
        mass = (weights * where).sum(-1)
        has = where.sum(-1) > 0
        if has.any():
            losses["attention"] = -torch.log(mass[has] + 1e-6).mean()
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    loss = F.cross_entropy(logits, target[keep])
    right = (logits.argmax(-1) == target[keep]).long()
    per_question = torch.zeros(len(index), dtype=torch.long).index_add_(0, keep.nonzero()[:, 0], 1 - right) == 0
    return loss, per_question, losses


def decay_steps(steps: int, decay: float) -> int:
    """Number of final steps over which the rate falls to 0: ``round(decay * steps)``."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay is the share of the steps at the end of the run, in [0, 1); got {decay}")
    return round(decay * steps)


def rate_factor(step: int, *, steps: int, warmup: int, decay: float) -> float:
    """Learning-rate multiplier before optimiser step ``step`` (0-based) of ``steps``.

    Linear warm-up over ``warmup`` steps, then constant, then (``decay`` > 0) a linear fall to 0 over the
    last ``decay_steps(steps, decay)`` steps. With ``decay=0`` the factor does not depend on ``steps``, so
    the checkpoint written at step N of a longer run is what ``--steps N`` gives.
    """
    tail = decay_steps(steps, decay)
    fall = 1.0 if tail == 0 or step < steps - tail else max(0.0, (steps - step) / tail)
    return min(1.0, (step + 1) / warmup) * fall


def train(args) -> Path:
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = tiny_vlm.build_tokenizer()
    processor = tiny_vlm.build_processor(tokenizer)
    model = tiny_vlm.build_model(
        tokenizer,
        seed=args.seed,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        intermediate=args.intermediate,
    )
    # both families, each on its own seeds; the held-out images are training-style (training photos)
    parts_train = [task.make_split("train", args.images, seed=args.seed, questions_per_image=args.questions)]
    parts_val = [task.make_split("train", args.val_images, seed=args.seed + 1000, questions_per_image=4)]
    if args.dense_images:
        parts_train.append(
            dense.make_split("train", args.dense_images, seed=args.seed, questions_per_image=args.dense_questions)
        )
    if args.dense_val_images:
        parts_val.append(dense.make_split("train", args.dense_val_images, seed=args.seed + 1000, questions_per_image=4))
    train_split, val_split = dense.combine(*parts_train), dense.combine(*parts_val)
    cache = None if args.no_cache else cache_dir() / "features"

    def encoded(parts, name):  # one cache file per family part, keyed by its scenes
        out = []
        for part in parts:
            out += encode_split(model, processor, part, cache and cache / f"{name}-{split_key(part)}.pt")
        return out

    enc_train, enc_val = encoded(parts_train, "train"), encoded(parts_val, "val")
    # DINOv2's channels differ in scale and share a large common part: the projector trains on standardised
    # features (the statistics are folded into its first layer when the weights are written)
    mean, std = feature_statistics(enc_train)
    enc_train, enc_val = standardise(enc_train, mean, std), standardise(enc_val, mean, std)
    rows_train = tokenize(processor, train_split, enc_train)
    rows_val = tokenize(processor, val_split, enc_val)

    params = [p for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"]
    for p in params:
        p.requires_grad_(True)
    aux = None
    if args.aux_weight > 0:
        hidden = model.config.text_config.hidden_size
        layer = args.relevance_layer or max(1, model.config.text_config.num_hidden_layers // 2)
        n_labels = sum(dense.LABEL_CLASSES)
        labels = [
            joint_labels(processor, scene) for scene in tqdm(train_split.scenes, desc="patch labels", unit="image")
        ]
        aux = Auxiliary(
            patch=torch.nn.Linear(hidden, n_labels),
            content=torch.nn.Linear(hidden, n_labels),
            relevance=torch.nn.Linear(hidden, 1),
            layer=layer,
            labels=labels,
            marks=question_marks(train_split, labels),
        )
        params = params + aux.parameters()
        model.set_attn_implementation("eager")  # the attention loss reads the attention maps
    print(
        f"trainable parameters: {sum(p.numel() for p in params):,}; train questions {len(rows_train)}, "
        f"val {len(rows_val)}",
        flush=True,
    )
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: rate_factor(s, steps=args.steps, warmup=args.warmup, decay=args.decay)
    )
    order: list[int] = []
    rng = random.Random(args.seed)
    model.train()
    model.model.vision_tower.eval()
    start = time.time()
    bar = tqdm(range(1, args.steps + 1), desc="training", unit="step")
    for step in bar:
        if len(order) < args.batch:
            extra = list(range(len(rows_train)))
            rng.shuffle(extra)
            order += extra
        index, order = order[: args.batch], order[args.batch :]
        loss, _, extra = batch_loss(model, enc_train, train_split, rows_train, index, aux)
        opt.zero_grad(set_to_none=True)
        (loss + args.aux_weight * sum(extra.values())).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v.item():.3f}" for k, v in extra.items()})
        if step % args.eval_every == 0 or step == args.steps:
            acc, kinds, families = evaluate(model, enc_val, val_split, rows_val)
            per_kind = ", ".join(f"{k} {v:.2f}" for k, v in kinds.items())
            per_family = ", ".join(f"{k} {v:.3f}" for k, v in families.items())
            print(
                f"step {step}: loss {loss.item():.4f}, val accuracy {acc:.3f} ({per_family}; {per_kind}), "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
            if args.checkpoints:
                save(model, processor, Path(args.checkpoints) / f"step-{step}", mean, std)
            model.train()
            model.model.vision_tower.eval()
    model.eval()
    model.set_attn_implementation("sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    out = save(model, processor, args.out, mean, std)
    print(f"wrote {out} in {time.time() - start:.0f} s of training", flush=True)
    return out


def save(model, processor, folder, mean, std) -> Path:
    """Write hired-tiny with the feature standardisation folded into the projector (``model`` is unchanged)."""
    projector = model.model.multi_modal_projector
    folded = copy.deepcopy(projector)
    fold_standardisation(folded, mean, std)
    model.model.multi_modal_projector = folded
    try:
        return tiny_vlm.save_hired_tiny(model, processor, folder)
    finally:
        model.model.multi_modal_projector = projector


@torch.no_grad()
def evaluate(model, encoded, split, rows, batch: int = 32) -> tuple[float, dict[str, float], dict[str, float]]:
    """Full-answer accuracy under teacher forcing (equals greedy exact match): overall, per kind and per
    family (:func:`family`)."""
    model.eval()
    ok = []
    for s in range(0, len(rows), batch):
        ok += batch_loss(model, encoded, split, rows, list(range(s, min(s + batch, len(rows)))))[1].tolist()
    kinds: dict[str, list[bool]] = {}
    families: dict[str, list[bool]] = {}
    for q, right in zip(split.questions, ok):
        kinds.setdefault(q.kind, []).append(right)
        families.setdefault(family(q.kind), []).append(right)
    mean = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    return sum(ok) / len(ok), mean, {k: sum(v) / len(v) for k, v in sorted(families.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hired.models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(tiny_vlm.WEIGHTS_DIR), help="output folder (default: the packaged weights)")
    p.add_argument("--images", type=int, default=800, help="training images of the first family (hired.models.task)")
    p.add_argument("--questions", type=int, default=8, help="questions per training image of the first family")
    p.add_argument("--val-images", type=int, default=60, help="held-out images of the first family")
    p.add_argument(
        "--dense-images",
        type=int,
        default=800,
        help="training images of the dense family (hired.models.dense; 0 = first family only)",
    )
    p.add_argument("--dense-questions", type=int, default=8, help="questions per dense training image")
    p.add_argument("--dense-val-images", type=int, default=60, help="held-out images of the dense family")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then a constant rate")
    p.add_argument(
        "--decay",
        type=float,
        default=0.25,
        help="share of the steps, at the end, over which the rate falls linearly to 0 (0 = constant to the end)",
    )
    p.add_argument("--hidden", type=int, default=128, help="decoder width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--heads", type=int, default=4, help="decoder attention heads")
    p.add_argument("--intermediate", type=int, default=384, help="decoder MLP width")
    p.add_argument(
        "--aux-weight",
        type=float,
        default=1.0,
        help="weight of the training-only losses (per-patch labels on the projector and the last "
        "layer's input, question relevance, the attention pull; 0 = off)",
    )
    p.add_argument(
        "--relevance-layer",
        type=int,
        default=None,
        help="decoder layer whose output learns which visual tokens the question is about (default: half the layers)",
    )
    p.add_argument("--checkpoints", default=None, help="also write the model to DIR/step-N at every evaluation")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    args = p.parse_args(argv)
    try:
        decay_steps(args.steps, args.decay)
    except ValueError as e:
        p.error(str(e))
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
