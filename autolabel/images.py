"""Decoding images from files or bytes into RGB uint8 arrays, robust to odd modes, EXIF and huge sizes.

Every failure raises :class:`ImageLoadError` naming the item and the reason, so a batch can report it and go on.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

#: Images whose long side exceeds this are downscaled right after decoding (discovery works at ~448 px).
MAX_DECODE_SIDE = 4096
#: Refuse anything with more pixels than this before decoding it (a decompression bomb, not a photo).
MAX_PIXELS = 400_000_000

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


class ImageLoadError(ValueError):
    """An image could not be used; ``item`` names it and ``reason`` says why."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


def _name_of(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) → RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16") and hi > 255:
            arr = arr / 257.0
        elif hi > 255 or lo < 0:
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        elif img.mode == "F" and hi <= 1.0:  # float images in [0, 1] (the usual convention)
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


#: EXIF Orientation value → the transpose that shows the image upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``; when a damaged EXIF block makes it fail, the Orientation tag alone is used."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # Pillow re-serialises the whole EXIF block and trips over bad tags
        try:
            orientation = img.getexif().get(0x0112)
        except Exception:
            return img
        method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
        return img.transpose(method) if method is not None else img


def _array_to_uint8(arr: np.ndarray, item: str) -> np.ndarray:
    """uint8 as is; bool → 0/255; floats in [0, 1] → ×255; other values must already lie in 0..255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.number):
        raise ImageLoadError(item, f"array of dtype {arr.dtype} is not an image")
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageLoadError(item, "array holds NaN or infinite values")
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(arr * 255).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ImageLoadError(item, f"{arr.dtype} array values {lo:g}..{hi:g} are outside 0..255")
    return np.rint(arr).astype(np.uint8)


def load_image(source: ImageSource, name: str | None = None, max_side: int | None = MAX_DECODE_SIDE) -> np.ndarray:
    """Decode ``source`` to an (H, W, 3) uint8 RGB array with EXIF orientation applied (see :func:`decode_image`)."""
    return decode_image(source, name, max_side)[0]


def decode_image(source: ImageSource, name: str | None = None, max_side: int | None = MAX_DECODE_SIDE
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``source`` to an (H, W, 3) uint8 RGB array and the upright image's full (height, width).

    Images larger than ``max_side`` on their long side are decoded downscaled (aspect kept) to bound memory;
    the full size is returned so results can still be given in the original image's pixels.
    Raises :class:`ImageLoadError` naming the item and the reason on any failure.
    """
    item = _name_of(source, name)
    opened: BinaryIO | None = None  # a file this function opened, closed on every path
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.size == 0:
            raise ImageLoadError(item, f"array of shape {arr.shape} is not an image")
        out = np.ascontiguousarray(_array_to_uint8(arr[:, :, :3], item))
        return out, out.shape[:2]
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            if isinstance(source, (str, os.PathLike)):
                path = Path(source)
                if not path.exists():
                    raise ImageLoadError(item, "file does not exist")
                if path.is_dir():
                    raise ImageLoadError(item, "is a directory, not an image")
                if path.stat().st_size == 0:
                    raise ImageLoadError(item, "file is empty")
                fp: BinaryIO = open(path, "rb")
                opened = fp
            elif isinstance(source, (bytes, bytearray, memoryview)):
                if len(source) == 0:
                    raise ImageLoadError(item, "no bytes")
                fp = io.BytesIO(bytes(source))
            else:
                fp = source
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                saved_limit = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = MAX_PIXELS
                try:
                    img = Image.open(fp)
                    full_size = img.size
                    if max_side is not None and max(img.size) > 2 * max_side and img.format == "JPEG":
                        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: far cheaper for huge photos.
                        img.draft("RGB", (max_side, max_side))
                    img.load()
                finally:
                    Image.MAX_IMAGE_PIXELS = saved_limit
        if isinstance(source, Image.Image):
            full_size = img.size
        decoded_size = img.size
        img = _apply_exif_orientation(img)
        if img.size != decoded_size:  # Orientation 5-8 swap the axes
            full_size = (full_size[1], full_size[0])
        img = to_rgb(img)
        if img.width < 1 or img.height < 1:
            raise ImageLoadError(item, f"image has no pixels ({img.width}x{img.height})")
        if max_side is not None and max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy(), (int(full_size[1]), int(full_size[0]))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(item, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(item, f"image too large to decode safely ({exc})") from None
    except OSError as exc:
        raise ImageLoadError(item, f"corrupt or truncated image ({exc})") from None
    except (ValueError, SyntaxError, MemoryError) as exc:
        raise ImageLoadError(item, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # decoders fed hostile bytes raise all sorts (struct.error, TypeError, ...)
        raise ImageLoadError(item, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    finally:
        if opened is not None:
            opened.close()


def iter_image_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only, sorted) into a list of file paths.

    Explicitly named files are kept whatever their suffix, so a bad file is reported rather than ignored.
    """
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out
