"""One batched encoder pass of the plugin: no host round trip per image, and the stage clock's split."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy, make_image, request
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

# reads that copy a device tensor's data to the host (and wait for the device on a GPU)
_HOST_READS = {
    torch.Tensor.tolist,
    torch.Tensor.item,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
}
_READ_NAMES = {f: f.__name__ for f in _HOST_READS}


class DeviceReads(TorchFunctionMode):
    """Records host reads of device tensors: the ones handed in (inputs, weights) and everything computed
    from them. On vLLM's CPU build every tensor lives on the host, so "on the device" is tracked by where
    a tensor came from; the layouts' host-side constants do not count."""

    def __init__(self, device_tensors):
        super().__init__()
        self._alive = list(device_tensors)  # keeps ids unique while the pass runs
        self._ids = {id(t) for t in self._alive}
        self.reads: list[str] = []

    def marked(self, tensor) -> bool:
        return id(tensor) in self._ids

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        on_device = any(id(x) in self._ids for x in inputs)
        if on_device and func in _READ_NAMES:
            self.reads.append(_READ_NAMES[func])
        out = func(*args, **kwargs)
        if on_device:  # outputs, and arguments an op may have written (vLLM's kernels fill given buffers)
            for x in [*inputs, *tree_leaves(out)]:
                if isinstance(x, torch.Tensor) and id(x) not in self._ids:
                    self._alive.append(x)
                    self._ids.add(id(x))
        return out


SIZES = [(100, 150), (160, 80), (84, 84), (60, 200), (170, 160), (33, 47)]  # mixed grids: a padded batch


def _image_input(path, sizes):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    out = processor.image_processor([make_image(h, w, seed=4) for h, w in sizes], return_tensors="pt")
    return {"type": "pixel_values", "pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}


def _reads_of_one_pass(model, image_input):
    device_tensors = [*model.parameters(), *model.buffers(), image_input["pixel_values"], image_input["image_sizes"]]
    mode = DeviceReads(device_tensors)
    with torch.inference_mode(), mode:
        embeds = model._process_image_input(image_input)
    assert all(mode.marked(e) for e in embeds)  # the provenance tracking reached the outputs
    return mode.reads


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.3},
        {"method": "cls_topk", "budget": 0.3},
        {"method": "spatial", "budget": 0.3},
        {"method": "hired", "budget": 0.3, "oracle": True},
    ],
    ids=["hired", "cls_topk", "spatial", "oracle"],
)
def test_no_host_round_trip_per_image(engines, next_path, entry):
    """Reads of device data to the host in one batched pass do not grow with the number of images (and
    stay a handful: the image sizes, the method's budgets, on a CPU the pack's count check)."""
    llm = engines(next_path, entry)
    one, many = _image_input(next_path, SIZES[:1]), _image_input(next_path, SIZES)
    reads_one, reads_many = llm.apply_model(lambda m: (_reads_of_one_pass(m, one), _reads_of_one_pass(m, many)))[0]
    assert reads_many == reads_one, f"1 image: {reads_one}; {len(SIZES)} images: {reads_many}"
    assert len(reads_many) <= 3, reads_many
    if entry["method"] == "hired" and not entry.get("oracle"):
        assert "tolist" in reads_many  # the counter does see the budgets' read


@pytest.mark.parametrize(
    "entry", [{"method": "hired", "budget": 0.3}, {"method": "cls_topk", "budget": 0.3}], ids=["hired", "cls_topk"]
)
def test_no_host_round_trip_per_image_onevision(engines, onevision_path, entry):
    """The same on LLaVA-OneVision: received-attention rows (queries in chunks), interpolated canvases."""
    llm = engines(onevision_path, entry)
    sizes = [*SIZES, (250, 250)]
    one, many = _image_input(onevision_path, sizes[:1]), _image_input(onevision_path, sizes)
    reads_one, reads_many = llm.apply_model(lambda m: (_reads_of_one_pass(m, one), _reads_of_one_pass(m, many)))[0]
    assert reads_many == reads_one, f"1 image: {reads_one}; {len(sizes)} images: {reads_many}"
    assert len(reads_many) <= 3, reads_many


def test_the_counter_sees_a_read_per_image(engines, next_path):
    """The check above would catch a per-image read: one .item() per image shows up as one read each."""
    llm = engines(next_path, {"method": "hired", "budget": 0.3})
    many = _image_input(next_path, SIZES)

    def per_image(model):
        mode = DeviceReads([*model.parameters(), many["pixel_values"], many["image_sizes"]])
        with torch.inference_mode(), mode:
            embeds = model._process_image_input(many)
            [e.sum().item() for e in embeds]
        return mode.reads

    reads = llm.apply_model(per_image)[0]
    assert reads.count("item") == len(SIZES)


def test_stage_clock_splits_the_encoder_pass(engines, next_path):
    llm = engines(next_path, {"method": "hired", "budget": 0.3})
    llm.apply_model(lambda m: m.hired_timing(True))
    try:
        llm.generate([request(make_image(100, 150, seed=8))], greedy(1))
        (stage,) = llm.apply_model(lambda m: m.hired_take_timings())[0]
    finally:
        llm.apply_model(lambda m: m.hired_timing(False))
    assert stage["images"] == 1
    assert 0 < stage["cls_rows"] < stage["vision"] < stage["encoder"]
    assert 0 < stage["selection"] < stage["encoder"] and 0 < stage["projector"] < stage["encoder"]
    assert stage["vision"] + stage["selection"] + stage["projector"] <= stage["encoder"]
    assert llm.apply_model(lambda m: m.hired_take_timings())[0] == []  # off: nothing recorded


def test_stage_clock_on_stock_vllm(engines, next_path):
    llm = engines(next_path)
    llm.apply_model(lambda m: m.hired_timing(True))
    try:
        llm.generate([request(make_image(84, 84, seed=8))], greedy(1))
        (stage,) = llm.apply_model(lambda m: m.hired_take_timings())[0]
    finally:
        llm.apply_model(lambda m: m.hired_timing(False))
    assert stage["cls_rows"] == 0 and 0 < stage["vision"] < stage["encoder"]


def test_stage_clock_splits_the_encoder_pass_onevision(engines, onevision_path):
    llm = engines(onevision_path, {"method": "hired", "budget": 0.3})
    llm.apply_model(lambda m: m.hired_timing(True))
    try:
        llm.generate([request(make_image(100, 150, seed=8))], greedy(1))
        (stage,) = llm.apply_model(lambda m: m.hired_take_timings())[0]
    finally:
        llm.apply_model(lambda m: m.hired_timing(False))
    assert stage["images"] == 1
    assert 0 < stage["cls_rows"] < stage["vision"] < stage["encoder"]  # the received rows' time
    assert 0 < stage["selection"] < stage["encoder"] and 0 < stage["projector"] < stage["encoder"]


def _step_reads(model, step, image_input: dict, marked: tuple[str, ...]):
    """``(host reads, outputs)`` of ``step(image_input)``, counting reads of the model's weights and buffers,
    the ``marked`` inputs and everything computed from them; every output must be computed from them."""
    mode = DeviceReads([*model.parameters(), *model.buffers(), *(image_input[k] for k in marked)])
    with torch.inference_mode(), mode:
        embeds = step(image_input)
    assert all(mode.marked(e) for e in embeds)
    return mode.reads, embeds


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory):
    from hired.testing import tiny_qwen3_vl

    model, processor = tiny_qwen3_vl(seed=5)
    path = tmp_path_factory.mktemp("tiny-qwen3-vl-pass")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _grid_input(path, sizes):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    out = processor.image_processor([make_image(h, w, seed=4) for h, w in sizes], return_tensors="pt")
    return {"type": "pixel_values", "pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.3},
        {"method": "cls_topk", "budget": 0.3},
        {"method": "dart", "budget": 0.3},
        {"method": "divprune", "budget": 0.3},
        {"method": "hired", "budget": 0.3, "oracle": True},
    ],
    ids=["hired", "cls_topk", "dart", "divprune", "oracle"],
)
def test_no_host_round_trip_per_image_merged_grid(engines, qwen3_path, entry):
    """The same on a merged-grid family (Qwen3-VL, DeepStack), images of different grids in one pass."""
    llm = engines(qwen3_path, entry)
    one, many = _grid_input(qwen3_path, SIZES[:1]), _grid_input(qwen3_path, SIZES)

    def reads(model, image_input):
        return _step_reads(model, model._process_image_input, image_input, ("pixel_values", "image_grid_thw"))[0]

    reads_one, reads_many = llm.apply_model(lambda m: (reads(m, one), reads(m, many)))[0]
    assert reads_many == reads_one, f"1 image: {reads_one}; {len(SIZES)} images: {reads_many}"
    assert len(reads_many) <= 3, reads_many


@pytest.fixture(scope="module")
def internvl_pass_path(tmp_path_factory):
    pytest.importorskip("torchvision")
    from hired.testing import tiny_internvl

    model, processor = tiny_internvl(seed=6)
    path = tmp_path_factory.mktemp("tiny-internvl-pass")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _tile_input(path, sizes):
    """vLLM's InternVL image input: the flat tiles, each image's tile count and (with hired) its grid."""
    from transformers import AutoProcessor

    from hired.families import get_family

    processor = AutoProcessor.from_pretrained(path)
    images = [make_image(h, w, seed=4) for h, w in sizes]
    out = processor.image_processor(images, return_tensors="pt")
    grids = get_family("internvl").processor_inputs(processor, images, {})["image_sizes"]
    return {
        "type": "pixel_values",
        "pixel_values": out["pixel_values"],
        "num_patches": out["num_patches"],
        "image_sizes": grids,
    }


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.3},
        {"method": "cls_topk", "budget": 0.3},
        {"method": "dart", "budget": 0.3},
        {"method": "hired", "budget": 0.3, "oracle": True},
    ],
    ids=["hired", "cls_topk", "dart", "oracle"],
)
def test_no_host_round_trip_per_image_internvl(engines, internvl_pass_path, entry):
    """The same on InternVL: tiles and thumbnails of different grids, the pixel shuffle, in one pass."""
    llm = engines(internvl_pass_path, entry)
    sizes = [(200, 200), (60, 130), (100, 100), (150, 230), (400, 70)]
    one, many = _tile_input(internvl_pass_path, sizes[:1]), _tile_input(internvl_pass_path, sizes)

    def reads(model, image_input):
        marked = ("pixel_values", "image_sizes")
        found, embeds = _step_reads(model, model._process_vision_input, image_input, marked)
        assert len(embeds) == len(image_input["image_sizes"])
        return found

    reads_one, reads_many = llm.apply_model(lambda m: (reads(m, one), reads(m, many)))[0]
    assert reads_many == reads_one, f"1 image: {reads_one}; {len(sizes)} images: {reads_many}"
    assert len(reads_many) <= 3, reads_many
    assert "tolist" in reads_many  # the counter sees the grids' one read (and HiRED's budgets')
