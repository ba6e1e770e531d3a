"""Train hired-tiny's language side on the synthetic task, with all visual tokens.

    python -m hired.models.train --steps 250      # the packaged weights (src/hired/models/hired_tiny/)
    python -m hired.models.train --out DIR --checkpoints CKPT         # 2000 steps, a copy every 250

The DINOv2 tower is frozen, so its features are computed once per training image (all partitions,
``vision_feature_layer`` output without [CLS], fp16) and cached on disk under ``hired.models.dinov2.cache_dir()``.
Each step then runs only the projector, LLaVA-NeXT's own ``pack_image_features`` (unpadding, newline
tokens) and the decoder, with a loss on the answer tokens and the end-of-sequence token. Everything is
seeded, and the learning rate is constant after a linear warm-up, so the checkpoint written at step N
of a longer run equals the result of ``--steps N``. Measured on 2 CPU cores: encoding the 800 training
images took 4.6 minutes and the decoder about 0.5 s per step of 16 questions when the cores were free
(10 to 20 times slower on the same cores shared with other jobs).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hired.models import task, tiny_vlm
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


def batch_loss(model, encoded, split, rows, index: list[int]):
    """Mean cross-entropy over answer tokens, and per question whether every answer token was the argmax."""
    m = model.model
    qs = [split.questions[i] for i in index]
    feats = [encoded[q.image][0].float() for q in qs]
    sizes = torch.tensor([encoded[q.image][1] for q in qs])
    projected = m.multi_modal_projector(torch.cat(feats))
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
    image_mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    if int(image_mask[..., 0].sum()) != len(packed):
        raise RuntimeError(f"{int(image_mask[..., 0].sum())} <image> tokens for {len(packed)} image features")
    embeds = embeds.masked_scatter(image_mask, packed.to(embeds.dtype))
    hidden = m.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    loss = F.cross_entropy(logits, target[keep])
    right = (logits.argmax(-1) == target[keep]).long()
    per_question = torch.zeros(len(index), dtype=torch.long).index_add_(0, keep.nonzero()[:, 0], 1 - right) == 0
    return loss, per_question


def train(args) -> Path:
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = tiny_vlm.build_tokenizer()
    processor = tiny_vlm.build_processor(tokenizer)
    model = tiny_vlm.build_model(tokenizer, seed=args.seed)
    train_split = task.make_split("train", args.images, seed=args.seed, questions_per_image=args.questions)
    val_split = task.make_split("train", args.val_images, seed=args.seed + 1000, questions_per_image=4)
    key = f"s{args.seed}-n{args.images}-q{args.questions}-c{tiny_vlm.CROP}"
    cache = None if args.no_cache else cache_dir() / "features"
    enc_train = encode_split(model, processor, train_split, cache and cache / f"train-{key}.pt")
    enc_val = encode_split(model, processor, val_split, cache and cache / f"val-s{args.seed + 1000}-n{args.val_images}.pt")
    rows_train = tokenize(processor, train_split, enc_train)
    rows_val = tokenize(processor, val_split, enc_val)

    params = [p for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"]
    for p in params:
        p.requires_grad_(True)
    print(f"trainable parameters: {sum(p.numel() for p in params):,}; train questions {len(rows_train)}, "
          f"val {len(rows_val)}", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    # linear warm-up over a fixed number of steps, then constant: the checkpoint written at step N of a
    # longer run is exactly what ``--steps N`` gives
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
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
        loss, _ = batch_loss(model, enc_train, train_split, rows_train, index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, enc_val, val_split, rows_val)
            print(f"step {step}: loss {loss.item():.4f}, val accuracy {acc:.3f}, {time.time() - start:.0f} s", flush=True)
            if args.checkpoints:
                tiny_vlm.save_hired_tiny(model, processor, Path(args.checkpoints) / f"step-{step}")
            model.train()
            model.model.vision_tower.eval()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = tiny_vlm.save_hired_tiny(model, processor, args.out)
    print(f"wrote {out} in {time.time() - start:.0f} s of training", flush=True)
    return out


@torch.no_grad()
def evaluate(model, encoded, split, rows, batch: int = 32) -> float:
    """Full-answer accuracy under teacher forcing (equals greedy exact match)."""
    model.eval()
    right = 0
    for s in range(0, len(rows), batch):
        _, ok = batch_loss(model, encoded, split, rows, list(range(s, min(s + batch, len(rows)))))
        right += int(ok.sum())
    return right / len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hired.models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(tiny_vlm.WEIGHTS_DIR), help="output folder (default: the packaged weights)")
    p.add_argument("--images", type=int, default=800, help="training images")
    p.add_argument("--questions", type=int, default=8, help="questions per training image")
    p.add_argument("--val-images", type=int, default=60)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then a constant rate")
    p.add_argument("--checkpoints", default=None, help="also write the model to DIR/step-N at every evaluation")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    train(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
