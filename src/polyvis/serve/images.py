"""Turn a request's image URL into a PIL image, within the server's limits.

Accepted: `data:image/...;base64,...` URIs always; local files (a path or `file://` URI) only
inside the directory given by --allow-local-files. Remote http(s) URLs are refused: fetching them
would let any client make the server download arbitrary things (SSRF), so it is not implemented.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from polyvis.models.rgb import as_rgb
from polyvis.serve.errors import APIError

_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def load_image(
    url: str,
    field: str,
    max_bytes: int,
    max_pixels: int,
    local_root: Path | None = None,
) -> Image.Image:
    """Decode one image URL to an RGB image; any problem is an APIError (400) naming `field`."""
    lower = url[:16].lower()
    if lower.startswith("data:"):
        data = _decode_data_uri(url, field, max_bytes)
    elif lower.startswith(("http://", "https://", "ftp://")):
        raise APIError(
            400,
            "remote image URLs are disabled on this server; send the image inline as a "
            "data:image/...;base64 URI",
            field,
            "remote_urls_disabled",
        )
    else:
        data = _read_local(url, field, max_bytes, local_root)
    return decode_image(data, field, max_pixels)


def _decode_data_uri(url: str, field: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise APIError(400, "malformed data URI: no ',' before the data", field, "invalid_image")
    parts = header[5:].split(";")
    media = parts[0].strip().lower()
    if "base64" not in [p.strip().lower() for p in parts[1:]]:
        raise APIError(
            400,
            "data URI must be base64-encoded (data:image/png;base64,...)",
            field,
            "invalid_image",
        )
    if media and not media.startswith("image/"):
        raise APIError(
            400, f"data URI has media type {media!r}, expected image/*", field, "invalid_image"
        )
    # Check the size before decoding, so an oversized payload costs nothing.
    if len(payload) > (max_bytes + 2) // 3 * 4 + 64:
        raise APIError(
            400, f"image is larger than the limit of {max_bytes} bytes", field, "image_too_large"
        )
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(
            400, "data URI payload is not valid base64", field, "invalid_image"
        ) from None
    if len(data) > max_bytes:
        raise APIError(
            400, f"image is larger than the limit of {max_bytes} bytes", field, "image_too_large"
        )
    return data


def _read_local(url: str, field: str, max_bytes: int, root: Path | None) -> bytes:
    if root is None:
        raise APIError(
            400,
            "local image paths are disabled on this server (start it with --allow-local-files DIR); "
            "send the image as a data:image/...;base64 URI",
            field,
            "local_files_disabled",
        )
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, "file:// URIs must name a local path", field, "invalid_image")
        raw = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise APIError(400, f"unsupported URL scheme {parsed.scheme!r}", field, "invalid_image")
    else:
        raw = url
    # A NUL byte or an over-long name makes the OS calls below raise: a bad path, not a 500.
    try:
        path = Path(raw)
        path = (path if path.is_absolute() else root / path).resolve()
        inside = path.is_relative_to(root)
        is_file = inside and path.is_file()
    except (ValueError, OSError) as err:
        reason = (
            "contains a NUL byte" if "null" in str(err) else f"is unusable ({type(err).__name__})"
        )
        raise APIError(400, f"the image path {reason}", field, "invalid_image") from None
    if not inside:
        raise APIError(
            403,
            "path lies outside the directory allowed by --allow-local-files",
            field,
            "forbidden_path",
        )
    if not is_file:
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        raise APIError(400, f"no such image file: {shown}", field, "invalid_image")
    if path.stat().st_size > max_bytes:
        raise APIError(
            400, f"image is larger than the limit of {max_bytes} bytes", field, "image_too_large"
        )
    return path.read_bytes()


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes -> RGB image; checks the pixel count from the header before decoding any pixels."""
    if not data:  # "data:image/png;base64," with nothing after the comma, or an empty file
        raise APIError(400, "the image is empty (0 bytes)", field, "invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise APIError(400, "image has no pixels", field, "invalid_image")
            if width * height > max_pixels:
                raise APIError(
                    400,
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                    field,
                    "image_too_large",
                )
            image.load()
            return as_rgb(image)  # exactly as training decodes it: upright, alpha on white
    except APIError:
        raise
    except Image.DecompressionBombError:
        raise APIError(
            400, "image exceeds the decompression-bomb limit", field, "image_too_large"
        ) from None
    except UnidentifiedImageError:
        raise APIError(
            400,
            "cannot decode image (not an image format the server reads)",
            field,
            "invalid_image",
        ) from None
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        # PIL's first line says what is broken ("image file is truncated"); the repr of our
        # in-memory buffer in it names nothing the client sent
        detail = _OBJECT_REPR.sub("", str(err).splitlines()[0] if str(err) else "").strip()
        raise APIError(
            400, f"cannot decode image ({detail or type(err).__name__})", field, "invalid_image"
        ) from None
