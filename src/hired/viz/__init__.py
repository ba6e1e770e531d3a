"""Pictures of what a method kept: ``plot_selection`` (drawn by ``hired show``, :mod:`hired.cli.show`).

    import hired, hired.viz
    run = hired.viz.run_method(model, processor, image, hired.HiRED(budget=0.2))  # one forward pass
    fig = hired.viz.plot_selection(image, run.selection, scores=run.scores, score_layers=run.layers,
                                   score_kind=run.kind)
    fig.savefig("selection.png")

matplotlib is optional (``pip install 'hired-vlm[viz]'``). Figures are built with the object-oriented API on
an Agg canvas, so nothing here touches pyplot or the global backend.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from hired.core.grid import Layout
from hired.images import load_image
from hired.selection import ImageSelection
from hired.viz.geometry import (
    PAD_COLOR,
    canvas_image,
    full_image_view,
    full_rects,
    selection_layout,
    sub_rects,
    subimage_bounds,
    to_numpy,
)

MISSING_MATPLOTLIB = (
    "hired show and hired.viz need matplotlib: pip install 'hired-vlm[viz]' (or pip install matplotlib)"
)

FULL_COLOR = "#00e5ff"  # kept full-image patches
SUB_COLOR = "#ffb300"  # kept sub-image patches
HEAT_CMAP = "magma"

# figure layout, in display pixels (figures are drawn at DPI dots per inch, so 1 unit = 1 pixel)
DPI = 100
MARGIN = 20  # around the figure
GAP = 34  # between the full image, the sub-image grid, the composite
SUB_GAP = 8  # between sub-image panels
TITLE = 36  # room for a two-line panel title
HEADER = 30  # a method row's header line
SECTION = 24  # the "[CLS] attention" (or "received attention") line above heatmaps
ROW_GAP = 26  # between method rows
FONT = 9


class Run(NamedTuple):
    """What one method did to one image: its selection, the scores it used, their layers and their kind
    (``"cls"``: the [CLS] row; ``"received"``: the attention each patch receives, for towers without [CLS])."""

    selection: ImageSelection
    scores: dict[str, Any]
    layers: dict[str, int]
    kind: str | None = None


SCORE_NOTES = {
    "cls": "[CLS] attention the method used (summed over heads",
    "received": "received attention the method used (mean over all queries, summed over heads",
    None: "attention scores the method used (summed over heads",
}
"""The line above a row's heatmaps, by score kind (``None``: not known)."""


def _applied_score_kind(model) -> str | None:
    """The score kind the applied method reads on this model's tower (``"cls"`` or ``"received"``)."""
    from hired.adapters.transformers import score_kind

    return score_kind(model)


def matplotlib_classes():
    """``(Figure, FigureCanvasAgg, Rectangle, Patch)`` or an ImportError that says how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch, Rectangle
    except ImportError as err:
        raise ImportError(MISSING_MATPLOTLIB) from err
    return Figure, FigureCanvasAgg, Rectangle, Patch


# ------------------------------------------------------------------------------------------ running


def run_method(model, processor, image, method, prompt: str = "Describe the image.") -> Run:
    """Apply ``method``, run one forward pass on ``image`` (and ``prompt``) and read back what it kept.

    The method that was applied before (if any) is restored afterwards; otherwise the model is stock again.
    """
    import inspect

    import torch

    import hired
    from hired.inference import build_prompt

    image = load_image(image)
    previous = hired.applied_method(model)
    hired.apply(model, processor, method)
    try:
        inputs = processor(images=image, text=build_prompt(processor, prompt), return_tensors="pt").to(model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        with torch.inference_mode():
            model(**inputs, **extra)
        selection = hired.last_selection(model)[0]
        scores = hired.last_scores(model)[0]
        layers = hired.score_layers(model)
        kind = _applied_score_kind(model)
    finally:
        if previous is not None:
            hired.apply(model, processor, previous)
        else:
            hired.remove(model, processor)
    return Run(selection, scores, layers, kind)


def method_label(method) -> str:
    """``hired(budget=0.1, alpha=0.5, mapping='reference')``: budget and alpha always, other options if changed."""
    parts = []
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if f.name in ("budget", "alpha") or value != f.default:
            text = repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{f.name}={text}")
    return f"{method.name}({', '.join(parts)})"


# ------------------------------------------------------------------------------------------ geometry


# ------------------------------------------------------------------------------------------ drawing


class _Sheet:
    """Places axes on a figure by pixel rectangles measured from the top-left corner."""

    def __init__(self, width: float, height: float):
        Figure, FigureCanvasAgg, self.Rectangle, self.Patch = matplotlib_classes()
        self.width, self.height = width, height
        self.fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.fig)

    def axes(self, x: float, y: float, w: float, h: float, gid: str):
        ax = self.fig.add_axes((x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height))
        ax.set_gid(gid)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.6)
            spine.set_color("#888888")
        return ax

    def text(self, x: float, y: float, s: str, **kw):
        self.fig.text(x / self.width, 1 - y / self.height, s, va="top", ha="left", **kw)


@functools.lru_cache(maxsize=1)
def _renderer():
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(10, 10, DPI)


def _text_px(text: str, size: float, bold: bool = False) -> float:
    """Width in pixels of one line of text at ``size`` points, as Agg draws it."""
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    return _renderer().get_text_width_height_descent(text, prop, ismath=False)[0]


def _title(ax, width: float, line1: str, line2: str = "", pad: float = 3) -> None:
    """A one- or two-line panel title, shrunk (down to 6.5 pt) to fit ``width`` pixels."""
    size = FONT
    while size > 6.5 and max(_text_px(line, size) for line in (line1, line2)) > width:
        size -= 0.5
    ax.set_title(f"{line1}\n{line2}" if line2 else line1, fontsize=size, pad=pad, linespacing=1.25)


def _boxes(sheet: _Sheet, ax, rects, color: str, gid: str, inset: float, lw: float = 0.9) -> None:
    """Outline each rectangle ``(x, y, w, h)``, shrunk by ``inset`` of its size so neighbours stay apart."""
    from matplotlib import patheffects

    halo = [patheffects.Stroke(linewidth=lw + 1.1, foreground=(0, 0, 0, 0.45)), patheffects.Normal()]
    for x, y, w, h in rects:
        dx, dy = inset * w, inset * h
        box = sheet.Rectangle(
            (x + dx, y + dy), w - 2 * dx, h - 2 * dy, fill=False, edgecolor=color, linewidth=lw, gid=gid
        )
        box.set_path_effects(halo)
        ax.add_patch(box)


def _grey_invalid(ax, valid: np.ndarray, side: int) -> None:
    """Grey out the padded (invalid) patches of a sub-image panel, in patch coordinates."""
    overlay = np.zeros((side, side, 4))
    overlay[~valid] = (*PAD_COLOR, 0.85)
    ax.imshow(overlay, extent=(0, side, side, 0), interpolation="nearest", zorder=2)


def _heat(ax, values: np.ndarray, valid: np.ndarray | None, extent) -> None:
    """A per-panel normalised heatmap; invalid patches grey."""
    import matplotlib

    data = np.ma.masked_array(values, mask=None if valid is None else ~valid)
    cmap = matplotlib.colormaps[HEAT_CMAP].with_extremes(bad=PAD_COLOR)
    lo, hi = (float(data.min()), float(data.max())) if data.count() else (0.0, 1.0)
    ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, extent=extent, interpolation="nearest")


def plot_selection(
    image,
    selection: ImageSelection | Sequence[ImageSelection],
    *,
    scores: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    score_layers: Mapping[str, int] | Sequence[Mapping[str, int]] | None = None,
    score_kind: str | Sequence[str | None] | None = None,
    labels: Sequence[str] | None = None,
    heatmap: bool | None = None,
    title: str | None = None,
    patch_size: int = 14,
    min_crop_px: int = 240,
    full_view: str | None = None,
    stretched: bool = False,
):
    """A matplotlib Figure of what was kept: one row per selection (e.g. one per method, same image).

    Each row shows the full-image partition, the sub-image grid in its real layout (kept patches outlined,
    padding greyed) and a composite mapping every kept patch back onto the original image.

    Args:
        image: the original image (PIL, path or URL) the selection was made on.
        selection: an entry of ``hired.last_selection(model)``, or a list of them (one row each).
        scores: the matching entry (or list) of ``hired.last_scores(model)``: role → ``(P, T)`` scores.
        score_layers: role → vision layer, for the heatmap titles (``run_method`` returns it).
        score_kind: what the scores are, for the line above the heatmaps: ``"cls"`` ([CLS] attention) or
            ``"received"`` (the attention each patch receives, on towers without [CLS]); one per selection
            or one for all (``run_method`` returns it as ``Run.kind``). ``None``: "attention scores".
        labels: one row title per selection (e.g. the method and its options).
        heatmap: draw the attention maps ([CLS] or received) under each row; default: whenever ``scores`` are given.
        title: a title for the whole figure.
        patch_size: ViT patch size in pixels; crops are drawn at ``side * patch_size`` pixels.
        min_crop_px: small crops are upscaled (nearest, by an integer factor) to at least this size.
        full_view: how the full-image partition was made: ``"squash"`` (LLaVA-NeXT, the default with a
            sub-image grid) or ``"crop"`` (centre crop, LLaVA-1.5's processor, the default without one).
        stretched: the processor stretched the image over the sub-image grid, without padding, and squashed
            it into the full image (InternVL's tiles and thumbnail, ``Family.fills_canvas``).
    """
    matplotlib_classes()
    image = load_image(image)
    selections = [selection] if isinstance(selection, ImageSelection) else list(selection)
    if not selections or not all(isinstance(s, ImageSelection) for s in selections):
        raise TypeError("selection must be an ImageSelection (an entry of hired.last_selection) or a list of them")
    n = len(selections)
    score_list = _per_row(scores, n, "scores")
    layer_list = _per_row(score_layers, n, "score_layers")
    kinds = list(score_kind) if isinstance(score_kind, (list, tuple)) else [score_kind] * n
    if len(kinds) != n:
        raise ValueError(f"got {len(kinds)} score kinds for {n} selections")
    for kind in kinds:
        if kind not in SCORE_NOTES:
            raise ValueError(f"score_kind must be 'cls', 'received' or None, got {kind!r}")
    heatmap = any(s is not None for s in score_list) if heatmap is None else heatmap
    if heatmap and any(s is None for s in score_list):
        raise ValueError("heatmap=True needs scores for every selection (hired.last_scores(model))")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} selections")

    for sel in selections:
        rows_, cols_ = sel.partitions[0].grid
        if rows_ != cols_:
            raise ValueError(
                f"plot_selection draws square partitions (LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision); this selection's "
                f"image is one {rows_}x{cols_} grid of merged tokens (Qwen2.5-VL), which it does not draw yet"
            )
    layouts = [selection_layout(s, stretched) for s in selections]
    shapes = {(lay.grid, lay.side, lay.top, lay.bottom, lay.left, lay.right) for lay in layouts}
    if len(shapes) > 1:
        raise ValueError("all selections in one figure must come from the same image and model geometry")
    layout, first = layouts[0], selections[0]
    if layout.num_subimages and tuple(first.image_size) != (image.height, image.width):
        raise ValueError(
            f"the selection was made on a {first.image_size[1]}x{first.image_size[0]} image, "
            f"but the image given is {image.width}x{image.height}"
        )
    for sel in selections:
        for p in sel.partitions:
            if p.grid != (layout.side, layout.side) or any(not 0 <= t < layout.tokens for t in p.kept):
                raise ValueError("a partition's kept indices or grid do not match the selection's layout")

    side, (rows, cols) = layout.side, layout.grid
    crop = side * patch_size
    scale = max(1, math.ceil(min_crop_px / crop))
    c = crop * scale  # panel side in display pixels
    mode = full_view or ("squash" if layout.num_subimages or stretched else "crop")
    if mode not in ("squash", "crop"):
        raise ValueError(f"full_view must be 'squash' or 'crop', got {full_view!r}")

    # horizontal layout (pixels): full image | sub-image grid | composite (| extra score maps)
    grid_w = cols * c + (cols - 1) * SUB_GAP if cols else 0
    block_h = rows * c + (rows - 1) * (SUB_GAP + TITLE) if rows else c
    x_grid = MARGIN + c + GAP
    x_comp = x_grid + (grid_w + GAP if cols else 0)
    comp_h = block_h
    comp_w = comp_h * image.width / image.height
    max_w = max(2 * c, grid_w) * 1.6
    if comp_w > max_w:
        comp_w, comp_h = max_w, max_w * image.height / image.width
    comp_w = max(comp_w, 0.55 * c)
    extra_roles = [
        [r for r in sorted(s or {}) if r != _part_role(s) and (r != "budget" or layout.num_subimages)]
        for s in score_list
    ]
    n_extra = max((len(e) for e in extra_roles), default=0) if heatmap else 0
    headers = []
    for i, sel in enumerate(selections):
        label = labels[i] if labels is not None else f"selection {i + 1}" if n > 1 else "selection"
        pct = 100 * sel.num_tokens / max(sel.num_tokens_stock, 1)
        grid_txt = f", {rows}x{cols} sub-image grid" if rows else ""
        headers.append(
            f"{label}:  {sel.num_kept} patches kept, {sel.num_tokens} of {sel.num_tokens_stock} visual tokens "
            f"reach the LLM ({pct:.1f}%){grid_txt}"
        )
    padded = min(layout.valid_counts) < layout.tokens
    notes = [
        SCORE_NOTES[kind] + "; colours normalised per panel" + ("; grey: padding)" if padded else ")") for kind in kinds
    ]
    key = [(FULL_COLOR, "none", "kept, full image")]
    if layout.num_subimages:
        key.append((SUB_COLOR, "none", "kept, sub-image"))
    key.append(("none", (0, 0, 0, 0.55), "dimmed: dropped"))
    if padded:
        key.append(("none", PAD_COLOR, "grey: padding"))
    key_w = sum(_text_px(text, FONT) + 45 for *_, text in key)
    texts = [_text_px(h, FONT + 2, bold=True) for h in headers] + [key_w]
    texts += [_text_px(title, FONT + 3, bold=True)] if title else []
    texts += [_text_px(note, FONT) for note in notes] if heatmap else []
    width = x_comp + comp_w + max(0, n_extra - 1) * (GAP + comp_w) + MARGIN  # 2nd+ extra maps go to the right
    width = max(width, 2 * MARGIN + max(texts))
    top_h = (24 if title else 0) + 22
    has_maps = [bool(heatmap and sc) for sc in score_list]
    row_hs = [
        HEADER + TITLE + block_h + (SECTION + TITLE + block_h if m else SECTION if heatmap else 0) for m in has_maps
    ]
    height = MARGIN + top_h + sum(row_hs) + (n - 1) * ROW_GAP + MARGIN
    sheet = _Sheet(width, height)
    if title:
        sheet.text(MARGIN, MARGIN, title, fontsize=FONT + 3, fontweight="bold")
    handles = [sheet.Patch(edgecolor=e, facecolor=f, label=t, linewidth=1.2) for e, f, t in key]
    sheet.fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(MARGIN / width, 1 - (MARGIN + top_h - 24) / height),
        ncol=len(handles),
        frameon=False,
        fontsize=FONT,
        handlelength=1.4,
        borderpad=0,
        borderaxespad=0,
        columnspacing=2.0,
        handletextpad=0.5,
    )

    # the processor's views of the image, upscaled for display
    full_img, full_region = full_image_view(image, crop, mode)
    full_px = np.asarray(full_img.resize((c, c), Image.NEAREST))
    canvas = canvas_image(image, layout, crop, stretched) if layout.num_subimages else None
    comp_px = np.asarray(image.resize((max(1, round(comp_w)), max(1, round(comp_h))), Image.LANCZOS))
    valid = layout.valid_mask.numpy().reshape(-1, side, side)

    y = MARGIN + top_h
    for i, sel in enumerate(selections):
        sheet.text(MARGIN, y + 6, headers[i], fontsize=FONT + 2, fontweight="bold")
        top = y + HEADER + TITLE
        panels = _panel_boxes(layout, c, top, x_grid)
        _draw_partitions(sheet, sel, layout, panels, full_px, canvas, crop, scale, valid, mode)
        _draw_composite(sheet, sel, layout, image, comp_px, (x_comp, top, comp_w, comp_h), full_region)
        if heatmap and not has_maps[i]:
            sheet.text(
                MARGIN,
                top + block_h + 8,
                "(this method reads no attention scores)",
                fontsize=FONT,
                style="italic",
                color="#444444",
            )
        if has_maps[i]:
            htop = top + block_h + SECTION + TITLE
            sheet.text(MARGIN, top + block_h + 8, notes[i], fontsize=FONT, style="italic", color="#444444")
            _draw_heatmaps(
                sheet,
                score_list[i],
                layer_list[i],
                sel,
                layout,
                image,
                _panel_boxes(layout, c, htop, x_grid),
                c,
                (x_comp, htop, comp_w, comp_h),
                extra_roles[i],
            )
        y += row_hs[i] + ROW_GAP
    return sheet.fig


def _per_row(value, n: int, name: str) -> list:
    """``value`` as one entry per selection: a single mapping is accepted for a single selection."""
    if value is None:
        return [None] * n
    if isinstance(value, Mapping):
        if n != 1:
            raise ValueError(f"{name}: give one mapping per selection ({n} selections)")
        return [value]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"got {len(value)} {name} for {n} selections")
    return value


def _part_role(scores) -> str | None:
    """The role whose scores rank patches inside partitions: ``"select"`` if present."""
    if not scores:
        return None
    return "select" if "select" in scores else sorted(scores)[0]


def _panel_boxes(layout: Layout, c: float, top: float, x_grid: float) -> list[tuple[float, float]]:
    """Top-left pixel corner of each partition panel: full image first, then the grid row-major."""
    boxes = [(MARGIN, top)]
    rows, cols = layout.grid
    for r in range(rows):
        for col in range(cols):
            boxes.append((x_grid + col * (c + SUB_GAP), top + r * (c + SUB_GAP + TITLE)))
    return boxes


def _draw_partitions(sheet, sel, layout, panels, full_px, canvas, crop, scale, valid, mode) -> None:
    side, cols = layout.side, layout.grid[1]
    c = crop * scale
    for k, (part, (x, y)) in enumerate(zip(sel.partitions, panels)):
        ax = sheet.axes(x, y, c, c, f"hired-partition-{k}")
        if k == 0:
            ax.imshow(full_px, extent=(0, side, side, 0), interpolation="nearest")
            name = "full image (squashed)" if mode == "squash" else "image (centre crop)"
            color = FULL_COLOR
        else:
            r, col = divmod(k - 1, cols)
            tile = canvas.crop((col * crop, r * crop, (col + 1) * crop, (r + 1) * crop)).resize((c, c), Image.NEAREST)
            ax.imshow(np.asarray(tile), extent=(0, side, side, 0), interpolation="nearest")
            if not valid[k].all():
                _grey_invalid(ax, valid[k], side)
            name = f"sub-image {r + 1},{col + 1}"
            color = SUB_COLOR
        ax.set_xlim(0, side)
        ax.set_ylim(side, 0)
        of = f" of {part.valid} valid" if part.valid < layout.tokens else f" of {part.valid}"
        _title(ax, c, name, f"budget {part.budget} · kept {len(part.kept)}{of}")
        rects = [(t % side, t // side, 1.0, 1.0) for t in part.kept]
        _boxes(sheet, ax, rects, color, "hired-kept", inset=0.07, lw=1.0 if c / side >= 20 else 0.7)


def _draw_composite(sheet, sel, layout, image, comp_px, box, full_region) -> None:
    x, y, w, h = box
    W, H = image.size
    ax = sheet.axes(x, y, w, h, "hired-composite")
    full = full_rects(sel.partitions[0].kept, layout.side, full_region)
    subs = [r for k, p in enumerate(sel.partitions[1:]) for r in sub_rects(p.kept, k, layout, (W, H))]
    # dim what no partition kept
    ph, pw = comp_px.shape[:2]
    shade = np.full((ph, pw), 0.55)
    for rx, ry, rw, rh in full + subs:
        shade[int(ry * ph / H) : math.ceil((ry + rh) * ph / H), int(rx * pw / W) : math.ceil((rx + rw) * pw / W)] = 0.0
    overlay = np.zeros((ph, pw, 4))
    overlay[..., 3] = shade
    ax.imshow(comp_px, extent=(0, W, H, 0), interpolation="antialiased")
    ax.imshow(overlay, extent=(0, W, H, 0), interpolation="nearest")
    _boxes(sheet, ax, full, FULL_COLOR, "hired-composite-kept", inset=0.05, lw=0.9)
    _boxes(sheet, ax, subs, SUB_COLOR, "hired-composite-kept", inset=0.08, lw=0.6)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    _title(ax, w, "all kept patches on the original", f"{W}x{H} image")


def _draw_heatmaps(sheet, scores, layers, sel, layout, image, panels, c, comp_box, extra) -> None:
    """Partition role maps under the partition panels; other roles (full image) under the composite."""
    side, cols = layout.side, layout.grid[1]
    layers = layers or {}

    def named(role: str) -> str:
        return f"{role} scores" + (f", layer {layers[role]}" if role in layers else "")

    role = _part_role(scores)
    if role is not None:
        values = to_numpy(scores[role])
        if values.shape != (len(sel.partitions), layout.tokens):
            raise ValueError(
                f"scores[{role!r}] has shape {values.shape}, expected {(len(sel.partitions), layout.tokens)}"
            )
        valid = layout.valid_mask.numpy()
        for k, (x, y) in enumerate(panels):
            ax = sheet.axes(x, y, c, c, f"hired-heatmap-{k}")
            _heat(ax, values[k].reshape(side, side), valid[k].reshape(side, side) if k else None, (0, side, side, 0))
            where = "full image" if k == 0 else f"sub-image {(k - 1) // cols + 1},{(k - 1) % cols + 1}"
            _title(ax, c, where, named(role))
    W, H = image.size
    x0, top, comp_w, comp_h = comp_box
    for j, r in enumerate(extra):
        values = to_numpy(scores[r])
        ax = sheet.axes(x0 + j * (comp_w + GAP), top, comp_w, comp_h, f"hired-heatmap-{r}")
        _heat(ax, values[0].reshape(side, side), None, (0, W, H, 0))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        if layout.num_subimages:
            xs, ys = subimage_bounds(layout, (W, H))
            for bx in xs:
                ax.axvline(bx, color="white", lw=1.0, ls="--")
            for by in ys:
                ax.axhline(by, color="white", lw=1.0, ls="--")
            _label_budgets(ax, sel, layout, (W, H))
        _title(ax, comp_w, named(r), "full image; numbers: sub-image budgets" if layout.num_subimages else "full image")


def _label_budgets(ax, sel, layout, size) -> None:
    """Write each sub-image's budget at the centre of the part of the original it covers."""
    W, H = size
    side, cols = layout.side, layout.grid[1]
    if layout.right <= layout.left or layout.bottom <= layout.top:  # no sub-image covers any of the image
        return
    for k, part in enumerate(sel.partitions[1:]):
        r, c = divmod(k, cols)
        y0 = max(0.0, (r * side - layout.top) / layout.valid_rows) * H
        y1 = min(1.0, ((r + 1) * side - layout.top) / layout.valid_rows) * H
        x0 = max(0.0, (c * side - layout.left) / (layout.right - layout.left)) * W
        x1 = min(1.0, ((c + 1) * side - layout.left) / (layout.right - layout.left)) * W
        if y1 > y0 and x1 > x0:
            ax.text(
                (x0 + x1) / 2,
                (y0 + y1) / 2,
                str(part.budget),
                ha="center",
                va="center",
                fontsize=FONT + 3,
                fontweight="bold",
                color="white",
                bbox=dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.45, edgecolor="none"),
            )


def check_figure_path(out: str | Path) -> Path:
    """``out`` as a ``Path``; ``ValueError`` unless matplotlib can write it (by its suffix), ``ImportError``
    without matplotlib."""
    out = Path(out)
    Figure, FigureCanvasAgg, *_ = matplotlib_classes()
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ValueError(
            f"--out {out}: cannot write a {suffix or 'suffix-less'!r} figure; use one of {', '.join(sorted(formats))}"
        )
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory")
    return out
