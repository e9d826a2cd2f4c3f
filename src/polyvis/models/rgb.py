"""as_rgb: the one rule for turning a decoded image into the RGB image a model sees, shared by
the processor, the data pipeline, the server and the lmms-eval plugin (PIL only, no torch)."""

from __future__ import annotations

from PIL import Image, ImageOps

_ORIENTATION = 0x0112  # the EXIF tag cameras use to say "turn me"


def as_rgb(im: Image.Image) -> Image.Image:
    """The image as every polyvis path shows it to a model (training, eval, chat, the server):
    turned upright by its EXIF orientation, transparent pixels white rather than whatever colour
    hides under alpha 0, 16-bit greyscale scaled to 8 bits (PIL's convert clips it to white)."""
    if im.getexif().get(_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale (PNG's I;16, or I from older decoders): PIL's convert clips every
        # value above 255 to white, so the 16-bit range is scaled down to 8 bits instead
        import numpy as np

        grey = np.asarray(im, dtype=np.int64) >> 8
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
