"""Safe image loading: RGB out, decompression bombs and broken files refused with the file named.

A training run should never die on one bad image, nor allocate gigabytes for a tiny PNG that
declares 100000 x 100000 pixels. `load_image` checks the declared size from the header *before*
decoding, and turns every decoding failure into an `ImageError` (a `DataError`) whose `reason`
says which kind of problem it was, so datasets can count skips by reason.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from polyvis.errors import DataError
from polyvis.models.rgb import as_rgb

# 64 Mpx (8192 x 8192): far above any encoder's input, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

REASONS = ("missing", "corrupt", "too_large")

# A Python object's repr inside a PIL message (the BytesIO we decode from): it names no file.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageError(DataError):
    """An image that cannot be used; `reason` is one of REASONS, `path` the file."""

    def __init__(self, path: str | Path, reason: str, message: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {message}")


def _why(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def image_hash(path: str | Path) -> str:
    """sha1 of the file's bytes (the feature cache's key for an image)."""
    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise ImageError(path, "missing", f"cannot read image ({_why(err)})") from None
    return hashlib.sha1(data).hexdigest()


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB (EXIF rotation applied, transparency over white)."""
    return load_image_and_hash(path, max_pixels)[0]


def load_image_and_hash(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, str]:
    """`load_image` and `image_hash` from one read of the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise ImageError(path, "missing", f"cannot read image ({_why(err)})") from None
    return decode_image(data, path, max_pixels), hashlib.sha1(data).hexdigest()


def decode_image(
    data: bytes, name: str | Path = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode image bytes to RGB; `name` is only used in error messages."""
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; PIL's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise ImageError(
                    name,
                    "too_large",
                    f"image declares {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (possible decompression bomb)",
                )
            im.load()
            return as_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # over 2 x PIL's own global limit
        raise ImageError(name, "too_large", f"refused by PIL: {err}") from None
    except UnidentifiedImageError:
        # PIL's message names the in-memory buffer (<_io.BytesIO object at 0x...>), not the file
        raise ImageError(
            name, "corrupt", "cannot decode image (not an image format PIL knows)"
        ) from None
    except Exception as err:
        # Broken files make PIL raise many types (OSError, SyntaxError, struct.error, zlib.error,
        # IndexError, ...); all of them mean "this file is unusable".
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        detail = _OBJECT_REPR.sub("", detail).strip() or type(err).__name__
        raise ImageError(name, "corrupt", f"cannot decode image ({detail})") from None
