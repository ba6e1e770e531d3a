"""InternVL (Hugging Face format, ``InternVLForConditionalGeneration``): InternViT tiles plus a thumbnail,
a 0.5 pixel shuffle, a Qwen2 / Llama language model with 1-D RoPE.

How an image becomes tokens in the stock model: the image processor picks a grid of ``rows x cols`` tiles
of the tower's size (the grid whose aspect ratio is closest to the image's, with ``min_patches`` to
``max_patches`` tiles), resizes the image onto it and cuts it; when that gives more than one tile it
appends a *thumbnail*, the whole image resized to one tile, as the LAST tile. InternViT prepends a [CLS]
token to each tile; its patches go through a pixel shuffle that merges each 2x2 block of patches into one
token (a 448 px tile of 14 px patches gives 16 x 16 = 256 tokens), and the processor writes ``<img>``,
``image_seq_length`` context tokens per tile and ``</img>``. The tiles' tokens go to the language model
tile after tile (each in raster order), the thumbnail's last; there are no image-newline tokens.

How hired maps that onto its partitions (:class:`TileLayout`):

* **Partitions.** The thumbnail is HiRED's *full image* (partition 0) and the tiles are its *sub-images*
  (partitions 1.., row-major); the whole canvas is valid (no padding), so the 2-D full-image → sub-image
  mapping (:func:`hired.core.grid.full_to_subimage`) maps a thumbnail token onto the tile under it. The
  vision step runs the thumbnail first; :meth:`TileLayout.pack_order` hands the tokens on in the stock
  order, thumbnail last. An image of one tile has no thumbnail: one partition, like LLaVA-1.5.
* **Budget and scores.** Everything counts the language model's tokens, after the pixel shuffle: an
  image of P tiles keeps ``floor(budget * P * T)`` of its ``P * T`` merged tokens (T per tile, 256 for
  448 px). A merged token's score is the sum of the [CLS] attention of its 2x2 patches (the ``select``
  score of the feature layer and the ``budget`` score of HiRED's early layer alike), its key the mean of
  theirs; its features are the stock pixel shuffle's (the model's own ``pixel_shuffle``). HiRED gives the
  thumbnail ``alpha`` of the budget and splits the rest over the tiles by the early layer's [CLS]
  attention on the thumbnail; inside each partition it keeps the top tokens by the feature layer's.
* **Which tiles are whose.** ``get_image_features`` gets only the flat batch of tiles. With hired applied
  the processor adds ``image_sizes`` to its output, ``(images, 4)`` long: each image's ``(height, width,
  rows, cols)``, the grid the image processor chose (under the call's own ``min_patches`` /
  ``max_patches``). ``generate`` hands that to the model's forward on every step (InternVL's forward
  takes ``image_sizes`` and ignores it); the runtime carries it from the forward to the vision step of
  exactly that forward's ``pixel_values``, so nothing about a call is kept on the shared model. A direct
  ``get_image_features`` call may pass ``image_sizes`` itself; without it the tiles must be one image of
  one tile, anything else is a ``ValueError``.
* **Videos.** The stock processor writes each video frame as one tile (``<img>``, ``image_seq_length``
  context tokens, ``</img>``) and puts the frames into ``pixel_values`` among the images' tiles, in the
  prompts' order. With hired applied it marks them in ``image_sizes`` (:meth:`InternVL.video_inputs`),
  which then holds one row per image and per frame in that order, a frame's row ``(height, width, 0, 0)``;
  the vision step runs the frames through the stock ``get_image_features`` and the images through hired
  (:meth:`InternVL.stock_split`), so frames are never pruned.
* **Positions.** The language model uses 1-D RoPE, so ``keep_positions`` works as for LLaVA-NeXT: each kept
  token gets its id in the stock sequence and ``<img>``, ``</img>`` and the text after an image continue
  after its stock length.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from hired.core.grid import Geometry, Layout
from hired.families.base import Family, StockSplit


class TileLayout(Layout):
    """The partitions of one InternVL image: the thumbnail (partition 0, HiRED's full image) and the
    ``rows x cols`` tiles (``grid``; ``(0, 0)`` for an image of one tile), every token valid, in units of
    the language model's tokens (``side`` merged tokens a side). The stock sequence is the tiles, one
    after another, then the thumbnail."""

    def pack_order(self, newline: bool) -> torch.Tensor:
        return _tile_order(self.num_partitions, self.tokens)

    def stock_map(self, newline: bool) -> torch.Tensor:
        return torch.arange(self.num_partitions * self.tokens)

    def stock_length(self, newline: bool) -> int:
        return self.num_partitions * self.tokens


@lru_cache(maxsize=64)
def _tile_order(partitions: int, tokens: int) -> torch.Tensor:
    """Partitions 1.. (the tiles) then partition 0 (the thumbnail), each in raster order."""
    order = torch.arange(partitions * tokens)
    return torch.cat([order[tokens:], order[:tokens]]) if partitions > 1 else order


def merge_factor(config) -> int:
    """Patches a side that InternVL's pixel shuffle merges into one token (2 for ``downsample_ratio=0.5``)."""
    ratio = float(config.downsample_ratio)
    factor = round(1 / ratio) if ratio > 0 else 0
    if factor < 1 or abs(factor * ratio - 1) > 1e-9:
        raise ValueError(f"InternVL's downsample_ratio must be 1/n for a whole n, got {config.downsample_ratio}")
    return factor


def _square(value, what: str) -> int:
    sides = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 2
    if sides[0] != sides[1]:
        raise ValueError(f"hired needs square InternVL {what}, got {tuple(sides)}")
    return sides[0]


def _sizes(image_sizes) -> list[list[int]]:
    rows = image_sizes.tolist() if hasattr(image_sizes, "tolist") else [list(r) for r in image_sizes]
    if any(len(r) != 4 for r in rows):
        raise ValueError(
            "InternVL's image_sizes (added by the processor hired was applied to) hold (height, width, rows, "
            f"cols) per image; got rows of {sorted({len(r) for r in rows})} values"
        )
    return [[int(v) for v in r] for r in rows]


class InternVL(Family):
    name = "internvl"
    title = "InternVL"
    anyres = True  # a thumbnail (HiRED's full image) and a grid of tiles (its sub-images)
    joins_features = True  # the forward takes get_image_features' pooler_output as one tensor
    videos_in_pixel_values = True  # video frames are tiles in pixel_values, among the images' tiles
    fills_canvas = True  # the image is stretched over its tile grid and into the thumbnail
    torchvision_extra = "internvl"  # its processor needs a video processor, which imports torchvision

    # ------------------------------------------------------------------------------------ config

    def check_config(self, config, has_cls: bool) -> None:
        super().check_config(config, has_cls)
        vc = config.vision_config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError(f"InternVL reads one vision_feature_layer, got {config.vision_feature_layer!r}")
        if config.vision_feature_layer == -1 and not getattr(vc, "use_mean_pooling", True):
            raise ValueError(
                "this InternVL tower ends in a layer norm (use_mean_pooling=False) that its last-layer features "
                "pass through; hired reads the encoder layers' outputs: use a tower with use_mean_pooling=True "
                "or another vision_feature_layer"
            )
        merge = merge_factor(config)
        patches = _square(vc.image_size, "tiles") // _square(vc.patch_size, "patches")
        if patches % merge:
            raise ValueError(f"a tile of {patches} x {patches} patches cannot be pixel-shuffled by {merge}")

    def config_has_cls(self, config) -> bool:
        """InternViT always prepends a [CLS] token."""
        return True

    def geometry(self, config) -> Geometry:
        """``crop_size``: the tile in pixels; ``patch_size``: one merged token's side in pixels (patch x 2),
        so ``side`` counts the language model's tokens of a tile."""
        vc = config.vision_config
        merge = merge_factor(config)
        return Geometry(crop_size=_square(vc.image_size, "tiles"), patch_size=_square(vc.patch_size, "patches") * merge)

    # ------------------------------------------------------------------------------------ layouts

    def tile_layout(self, image_size, grid, geometry: Geometry) -> TileLayout:
        """The layout of an image of ``image_size = (height, width)`` cut into ``grid = (rows, cols)`` tiles."""
        rows, cols = (int(v) for v in grid)
        if rows < 1 or cols < 1:
            raise ValueError(f"an InternVL tile grid has at least one row and column, got {(rows, cols)}")
        side = geometry.side
        if rows * cols == 1:
            return TileLayout(image_size=(int(image_size[0]), int(image_size[1])), side=side)
        return TileLayout(
            image_size=(int(image_size[0]), int(image_size[1])),
            side=side,
            grid=(rows, cols),
            bottom=rows * side,
            right=cols * side,
        )

    def layout(self, image_size, geometry: Geometry, *, single: bool = False) -> Layout:
        raise ValueError(
            "an InternVL layout depends on the processor's min_patches / max_patches: use "
            "Family.tile_layout with the grid of tile_grid"
        )

    @staticmethod
    def tile_grid(image_size, tile: int, min_patches: int, max_patches: int, crop: bool = True) -> tuple[int, int]:
        """``(rows, cols)`` of tiles the image processor cuts an image of ``image_size = (height, width)``
        into (transformers' own ``get_optimal_tiled_canvas``); ``(1, 1)`` without cropping."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        if not crop or int(max_patches) <= 1:
            return 1, 1
        cols, rows = get_optimal_tiled_canvas(
            (int(image_size[0]), int(image_size[1])), (tile, tile), int(min_patches), int(max_patches)
        )
        return int(rows), int(cols)

    def image_kwargs(self) -> tuple[str, ...]:
        return ("image_sizes",)

    def carried_kwargs(self) -> tuple[str, ...]:
        return ("image_sizes",)

    def processor_layout(self, geometry: Geometry, image_inputs: dict, image_idx: int) -> Layout:
        sizes = image_inputs.get("image_sizes")
        if sizes is None:
            raise ValueError("InternVL's processor output lacks image_sizes: apply hired with this processor")
        height, width, rows, cols = _sizes(sizes)[image_idx]
        layout = self.tile_layout((height, width), (rows, cols), geometry)
        counts = image_inputs.get("num_patches")
        if counts is not None and int(counts[image_idx]) != layout.num_partitions:
            raise ValueError(
                f"the image processor cut image {image_idx} into {int(counts[image_idx])} tiles, but its "
                f"{rows}x{cols} grid implies {layout.num_partitions}"
            )
        return layout

    def batch_layouts(self, geometry: Geometry, pixel_values, image_sizes, extra: dict[str, Any]):
        """Layouts of the images of a flat batch of tiles and their tiles, thumbnail first per image."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected (tiles, C, H, W)")
        tile = geometry.crop_size
        if tuple(pixel_values.shape[-2:]) != (tile, tile):
            raise ValueError(f"InternVL tiles of {tuple(pixel_values.shape[-2:])} px, the model's are {tile}x{tile}")
        tiles = pixel_values.shape[0]
        if image_sizes is None:
            if tiles != 1:
                raise ValueError(
                    f"InternVL's get_image_features was given {tiles} tiles without image_sizes, so hired cannot "
                    "tell which tiles form which image (or which are video frames): pass the image_sizes that "
                    "the processor hired was applied to returns"
                )
            return [self.tile_layout((tile, tile), (1, 1), geometry)], pixel_values
        layouts = [self.tile_layout((h, w), (r, c), geometry) for h, w, r, c in _sizes(image_sizes)]
        expected = sum(lay.num_partitions for lay in layouts)
        if tiles != expected:
            raise ValueError(f"pixel_values hold {tiles} tiles, image_sizes imply {expected}")
        order, start = [], 0
        for lay in layouts:
            p = lay.num_partitions
            order += [start + p - 1, *range(start, start + p - 1)] if p > 1 else [start]
            start += p
        return layouts, pixel_values[torch.tensor(order, device=pixel_values.device)]

    def stock_split(self, pixel_values, image_sizes) -> StockSplit | None:
        """The video frames among the tiles: rows ``(height, width, 0, 0)`` of ``image_sizes``, one tile each."""
        if image_sizes is None:
            return None
        rows = _sizes(image_sizes)
        frame = [r == 0 and c == 0 for _, _, r, c in rows]
        if not any(frame):
            return None
        if any((r < 1 or c < 1) and not f for (_, _, r, c), f in zip(rows, frame)):
            raise ValueError(
                "InternVL's image_sizes rows are (height, width, rows, cols) of an image's tile grid or "
                f"(height, width, 0, 0) of a video frame; got {rows}"
            )
        order: list[int | None] = []
        image_tiles, frame_tiles, at = [], [], 0
        for (_, _, r, c), is_frame in zip(rows, frame):
            if is_frame:
                frame_tiles.append(at)
                at += 1
                if order and order[-1] is not None:
                    order[-1] += 1
                else:
                    order.append(1)
            else:
                tiles = r * c + (r * c > 1)  # a thumbnail beside more than one tile
                image_tiles += range(at, at + tiles)
                at += tiles
                order.append(None)
        if pixel_values.shape[0] != at:
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} tiles, image_sizes imply {at}")
        device = pixel_values.device
        images = [r for r, f in zip(rows, frame) if not f]
        return StockSplit(
            images=pixel_values[torch.tensor(image_tiles, dtype=torch.long, device=device)],
            image_sizes=torch.tensor(images, dtype=torch.long).reshape(-1, 4) if images else None,
            stock=pixel_values[torch.tensor(frame_tiles, dtype=torch.long, device=device)],
            order=tuple(order),
        )

    def merge_patches(self, inner, config, feats, scores, keys):
        """Patch features, scores and keys of each tile → per language-model token: the model's own pixel
        shuffle for the features, the sum over each merged token's 2x2 patches for the scores, the mean
        for the keys."""
        merge = merge_factor(config)
        count, patches, width = feats.shape
        side = int(round(patches**0.5))
        if side * side != patches or side % merge:
            raise ValueError(f"{patches} patches per tile do not form a square the pixel shuffle can merge")
        shuffled = inner.pixel_shuffle(feats.reshape(count, side, side, width), scale_factor=config.downsample_ratio)
        feats = shuffled.reshape(count, -1, shuffled.shape[-1])
        small = side // merge

        def pool(values: torch.Tensor, how: str) -> torch.Tensor:
            rest = values.shape[2:]
            blocks = values.reshape(values.shape[0], small, merge, small, merge, *rest)
            pooled = blocks.sum(dim=(2, 4)) if how == "sum" else blocks.mean(dim=(2, 4))
            return pooled.reshape(values.shape[0], small * small, *rest)

        return feats, {r: pool(v, "sum") for r, v in scores.items()}, {r: pool(v, "mean") for r, v in keys.items()}

    # ------------------------------------------------------------------------------------ processor

    def placeholder(self, processor, count: int) -> str:
        """``<img>``, the kept tokens' context tokens, ``</img>`` (as the stock processor wraps every image)."""
        return f"{processor.start_image_token}{processor.image_token * count}{processor.end_image_token}"

    def processor_inputs(self, processor, images, kwargs: dict) -> dict:
        """``image_sizes``: ``(images, 4)`` long, each image's ``(height, width, rows, cols)`` under this call's
        image settings (the grid the image processor chooses)."""
        from transformers.image_utils import get_image_size, load_image, make_flat_list_of_images, to_numpy_array

        tile, low, high, crop = self.tile_settings(processor, kwargs)
        rows = []
        for image in make_flat_list_of_images(images):
            image = load_image(image) if isinstance(image, str) else image
            if isinstance(getattr(image, "size", None), tuple):  # PIL: (width, height)
                w, h = image.size
            else:
                array = to_numpy_array(image)
                h, w = array.shape if array.ndim == 2 else get_image_size(array)
            rows.append([h, w, *self.tile_grid((h, w), tile, low, high, crop)])
        return {"image_sizes": torch.tensor(rows, dtype=torch.long).reshape(-1, 4)}

    def video_inputs(self, processor, image_inputs, video_inputs, order) -> dict:
        """``image_sizes`` with a row per image and per video frame, in the order of ``pixel_values`` (the
        prompts' order, as the stock processor joins them): an image's ``(height, width, rows, cols)``, a
        frame's ``(height, width, 0, 0)``."""
        images = [] if image_inputs is None else _sizes(image_inputs["image_sizes"])
        frames = video_inputs["pixel_values_videos"]
        count = int(frames.shape[1])  # the stock processor stacks the videos: one frame count
        frame = [int(frames.shape[-2]), int(frames.shape[-1]), 0, 0]
        if order.count("image") != len(images) or order.count("video") != int(frames.shape[0]):
            raise ValueError(
                f"the prompts hold {order.count('image')} images and {order.count('video')} videos, the processor "
                f"was given {len(images)} images and {int(frames.shape[0])} videos"
            )
        rows, next_image = [], iter(images)
        for kind in order:
            rows += [next(next_image)] if kind == "image" else [frame] * count
        return {"image_sizes": torch.tensor(rows, dtype=torch.long).reshape(-1, 4)}

    @staticmethod
    def tile_settings(processor, kwargs) -> tuple[int, int, int, bool]:
        """``(tile side, min_patches, max_patches, crop_to_patches)`` of the processor's image processor
        under a call's image settings ``kwargs`` (a setting absent or ``None`` there: the processor's)."""
        ip = processor.image_processor

        def setting(name):
            value = kwargs.get(name)
            return getattr(ip, name) if value is None else value

        size = setting("size")
        height = size["height"] if isinstance(size, dict) else size.height
        width = size["width"] if isinstance(size, dict) else size.width
        if height != width:
            raise ValueError(f"hired needs square InternVL tiles, the image processor makes {height}x{width}")
        return int(height), int(setting("min_patches")), int(setting("max_patches")), bool(setting("crop_to_patches"))

    def model_classes(self):
        from transformers import InternVLForConditionalGeneration, InternVLModel

        return {InternVLForConditionalGeneration: "model", InternVLModel: None}

    def processor_class(self):
        from transformers import InternVLProcessor

        return InternVLProcessor

    def check_processor(self, processor, geometry: Geometry, config) -> None:
        expected = self.processor_class()
        if not isinstance(processor, expected):
            raise TypeError(f"a {self.title} model needs a {expected.__name__}, got {type(processor).__name__}")
        tokens = geometry.tokens
        if int(processor.image_seq_length) != tokens:
            raise ValueError(
                f"processor image_seq_length {processor.image_seq_length} differs from the model's {tokens} "
                "tokens per tile"
            )
        size = processor.image_processor.size
        sides = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        if tuple(int(s) for s in sides) != (geometry.crop_size, geometry.crop_size):
            raise ValueError(
                f"processor tiles of {sides[0]}x{sides[1]} px differ from the model's "
                f"{geometry.crop_size}x{geometry.crop_size}"
            )
