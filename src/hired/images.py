"""Loading images with errors that say what is wrong."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path, an http(s) URL or a PIL image.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a directory and
    ``ValueError`` for an empty, undecodable or zero-size image.
    """
    if isinstance(source, Image.Image):
        image = source
        name = "image"
    else:
        name = str(source)
        if name.startswith(("http://", "https://")):
            data = _download(name)
        else:
            path = Path(name).expanduser()
            if path.is_dir():
                raise IsADirectoryError(f"image path is a directory, not an image file: {name}")
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {name}")
            data = path.read_bytes()
        if not data:
            raise ValueError(f"image is empty (0 bytes): {name}")
        try:
            image = Image.open(BytesIO(data))
            image.load()
        except UnidentifiedImageError:
            raise ValueError(f"cannot decode image {name}: not an image format Pillow can read") from None
        except OSError as err:  # truncated or corrupt data
            raise ValueError(f"cannot decode image {name}: {err}") from None
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size ({image.width}x{image.height}): {name}")
    return image.convert("RGB")


def _download(url: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (user-given URL)
            return response.read()
    except OSError as err:
        raise OSError(f"cannot download image {url}: {err}") from None
