"""hired-tiny's training recipe: per-patch labels that follow anyres exactly, question relevance, both
question families in one training set, and a seeded, reproducible training command whose output loads as
hired-tiny."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hired.models import dense, task, tiny_vlm, train


@pytest.fixture(scope="module")
def processor():
    return tiny_vlm.build_processor(tiny_vlm.build_tokenizer())


@pytest.fixture(scope="module")
def split():
    return task.make_split("test", 12, seed=4)


def test_patch_labels_mark_the_pixels_of_each_shape(processor, split):
    """A sub-image patch labelled with a colour really shows that colour in the processor's own crops, and
    every shape is labelled somewhere in the sub-images with its shape and colour."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    colours = list(task.COLOURS)
    for index, scene in enumerate(split.scenes):
        labels = train.patch_labels(processor, scene)
        pixels = ip(split.image(index), return_tensors="pt")["pixel_values"][0]  # (P, 3, crop, crop)
        assert labels.shape == (len(pixels), (tiny_vlm.CROP // tiny_vlm.PATCH) ** 2, 3)
        side = tiny_vlm.CROP // tiny_vlm.PATCH
        for p in range(1, len(pixels)):
            rgb = (pixels[p] * std + mean) * 255
            for t in (labels[p, :, 1] > 0).nonzero()[:, 0].tolist():
                r, c = divmod(t, side)
                patch = rgb[:, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14]
                target = torch.tensor(task.COLOURS[colours[labels[p, t, 1] - 1]], dtype=torch.float).view(3, 1, 1)
                close = ((patch - target).abs().amax(0) < 40).float().mean()
                assert close >= 0.1, (index, p, t, float(close))
        found = {(int(s), int(c)) for s, c in labels[1:, :, :2].flatten(0, 1).tolist() if s > 0}
        expected = {(task.SHAPES.index(s.shape) + 1, colours.index(s.colour) + 1) for s in scene.shapes}
        assert found == expected


def test_full_image_quadrant_labels(processor, split):
    labels = train.patch_labels(processor, split.scenes[0])
    side = tiny_vlm.CROP // tiny_vlm.PATCH
    grid = labels[0, :, 2].view(side, side)
    half = side // 2
    assert (grid[:half, :half] == 1).all() and (grid[:half, half:] == 2).all()
    assert (grid[half:, :half] == 3).all() and (grid[half:, half:] == 4).all()
    assert (labels[1:, :, 2] == -100).all()


def test_relevance_marks_what_the_question_is_about(processor, split):
    for q in split.questions:
        labels = train.patch_labels(processor, split.scenes[q.image])
        marks = train.relevance(q, labels)
        shape_of = labels[..., 0]
        if q.kind == "count":
            assert torch.equal(marks.bool(), shape_of > 0)
        elif q.kind == "presence":
            assert marks.any() == (q.answer == "yes")
        else:
            named = task.SHAPES.index(q.question.rstrip("?").split()[-1]) + 1
            assert marks.any() and torch.equal(marks.bool(), shape_of == named)


def _train(tmp_path, name, seed=0, steps=3, checkpoints=None, decay=0.25):
    out = tmp_path / name
    argv = [
        "--out",
        str(out),
        "--images",
        "4",
        "--questions",
        "2",
        "--val-images",
        "2",
        "--dense-images",
        "3",
        "--dense-questions",
        "2",
        "--dense-val-images",
        "2",
        "--steps",
        str(steps),
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--warmup",
        "2",
        "--decay",
        str(decay),
        "--hidden",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--intermediate",
        "48",
        "--seed",
        str(seed),
        "--no-cache",
        "--threads",
        "1",
    ]
    if checkpoints is not None:
        argv += ["--checkpoints", str(checkpoints)]
    assert train.main(argv) == 0
    return out


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_seeded_and_writes_a_loadable_hired_tiny(tmp_path):
    first, again = _train(tmp_path, "a"), _train(tmp_path, "b")
    a, b = load_file(str(first / tiny_vlm.WEIGHTS_FILE)), load_file(str(again / tiny_vlm.WEIGHTS_FILE))
    assert _same_weights(a, b)
    assert not any(".vision_tower." in f".{k}" for k in a)  # the tower is never shipped
    other = load_file(str(_train(tmp_path, "c", seed=1) / tiny_vlm.WEIGHTS_FILE))
    assert other.keys() == a.keys() and not _same_weights(a, other)

    model, processor = tiny_vlm.load_hired_tiny(first)
    assert model.config.text_config.hidden_size == 32
    scene = task.make_split("test", 1, seed=0)
    inputs = processor(images=scene.image(0), text=tiny_vlm.prompt(scene.questions[0].question), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert np.isfinite(model.lm_head.weight.numpy()).all()


def test_a_checkpoint_of_a_longer_run_equals_the_shorter_run(tmp_path):
    # the README's claim: the step-N checkpoint of a longer run (--checkpoints) is what --steps N writes,
    # so a default step count can be chosen from one run's checkpoints; only with a constant rate (--decay 0)
    ckpt = tmp_path / "ckpt"
    longer = _train(tmp_path, "longer", steps=5, checkpoints=ckpt, decay=0)
    shorter = _train(tmp_path, "shorter", steps=3, decay=0)
    at3 = load_file(str(ckpt / "step-3" / tiny_vlm.WEIGHTS_FILE))
    short = load_file(str(shorter / tiny_vlm.WEIGHTS_FILE))
    assert _same_weights(at3, short)
    final = load_file(str(longer / tiny_vlm.WEIGHTS_FILE))  # two more steps change the weights
    assert final.keys() == short.keys() and not _same_weights(final, short)


def test_both_families_share_the_label_columns_and_the_marks(processor):
    """First-family labels are padded into the joint columns; dense labels and marks are the dense module's;
    every question's marks have its image's partition shape."""
    first, tables = task.make_split("test", 3, seed=5), dense.make_split("test", 3, seed=5)
    both = dense.combine(first, tables)
    labels = [train.joint_labels(processor, scene) for scene in both.scenes]
    for i, scene in enumerate(first.scenes):
        assert torch.equal(labels[i], dense.pad_labels(train.patch_labels(processor, scene)))
        assert (labels[i][..., 3:] == 0).all()
    for i, scene in enumerate(tables.scenes):
        assert torch.equal(labels[len(first.scenes) + i], dense.patch_labels(scene))
    marks = train.question_marks(both, labels)
    for q, m in zip(both.questions, marks):
        scene = both.scenes[q.image]
        assert m.shape == labels[q.image].shape[:2]
        if isinstance(scene, dense.Scene):
            assert torch.equal(m, dense.relevance(q, scene)) and m[1:].any()  # the asked item, in a sub-image
        else:
            assert torch.equal(m, train.relevance(q, labels[q.image]))
    assert [train.family(q.kind) for q in both.questions] == ["first"] * 12 + ["dense"] * 12


def test_cache_key_follows_the_scenes():
    a, b = dense.make_split("train", 3, seed=0), dense.make_split("train", 3, seed=1)
    assert train.split_key(a) == train.split_key(dense.make_split("train", 3, seed=0))
    assert train.split_key(a) != train.split_key(b)
    assert train.split_key(task.make_split("train", 3, seed=0)) != train.split_key(a)


def test_auxiliary_losses_on_a_mixed_batch(processor):
    """One training step's losses on questions of both families: the labels and marks line up with the packed
    visual tokens (a mismatch raises), every loss is finite, and the attention pull sees marked tokens."""
    model = tiny_vlm.build_model(processor.tokenizer, hidden=32, layers=2, heads=2, intermediate=48)
    model.set_attn_implementation("eager")
    both = dense.combine(
        task.make_split("train", 2, seed=0, questions_per_image=2),
        dense.make_split("train", 2, seed=0, questions_per_image=2),
    )
    encoded = train.encode_split(model, processor, both, None)
    rows = train.tokenize(processor, both, encoded)
    labels = [train.joint_labels(processor, scene) for scene in both.scenes]
    n = sum(dense.LABEL_CLASSES)
    aux = train.Auxiliary(
        torch.nn.Linear(32, n),
        torch.nn.Linear(32, n),
        torch.nn.Linear(32, 1),
        1,
        labels,
        train.question_marks(both, labels),
    )
    loss, right, extra = train.batch_loss(model, encoded, both, rows, list(range(len(rows))), aux)
    assert set(extra) == {"patch", "content", "relevance", "attention"}
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in extra.values())
    acc, kinds, families = train.evaluate(model, encoded, both, rows)
    assert set(families) == {"first", "dense"} and set(kinds) >= set(dense.KINDS)


def test_folded_standardisation_gives_the_same_projection():
    from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

    config = tiny_vlm.build_config(tiny_vlm.build_tokenizer(), hidden=32, layers=1, heads=2, intermediate=48)
    torch.manual_seed(0)
    projector = LlavaNextMultiModalProjector(config).double()
    raw = torch.randn(20, config.vision_config.hidden_size, dtype=torch.double) * 3 + 1.5
    encoded = [(raw[:12].view(2, 6, -1), (1, 1), 0), (raw[12:].view(1, 8, -1), (1, 1), 0)]
    mean, std = train.feature_statistics(encoded)
    assert torch.allclose(mean, raw.float().mean(0)) and torch.allclose(std, raw.float().std(0))
    expected = projector((raw - mean.double()) / std.double())
    train.fold_standardisation(projector, mean.double(), std.double())
    assert torch.allclose(projector(raw), expected, atol=1e-10)


def test_the_rate_warms_up_holds_and_falls_to_zero_over_the_last_share():
    f = [train.rate_factor(s, steps=20, warmup=4, decay=0.25) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4:16] == [1.0] * 12  # the fall starts at step 15 (= 20 - 5), still at 1.0
    assert f[15:] == [1.0, 0.8, 0.6, 0.4, 0.2]  # the last step still moves; the next would be 0
    assert train.decay_steps(6000, 0.25) == 1500
    # a constant rate does not depend on the run's length, which the step-N checkpoint test relies on
    assert [train.rate_factor(s, steps=10, warmup=4, decay=0.0) for s in range(10)] == [
        train.rate_factor(s, steps=1000, warmup=4, decay=0.0) for s in range(10)
    ]
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="decay is the share"):
            train.rate_factor(0, steps=10, warmup=1, decay=bad)
    with pytest.raises(SystemExit):
        train.main(["--decay", "1.5", "--steps", "3"])
