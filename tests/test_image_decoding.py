"""Every path decodes an image the same way (data.images.as_rgb): upright by its EXIF orientation,
alpha on white, 16-bit greyscale scaled, so a served or lmms-eval image is the training one."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from polyvis.data.images import decode_image
from polyvis.models.rgb import as_rgb
from polyvis.serve.images import decode_image as serve_decode


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_greyscale_is_scaled_not_clipped_to_white():
    ramp = np.array([[0, 256, 30000, 65535]], dtype=np.uint16)
    got = np.asarray(decode_image(_png(Image.fromarray(ramp))))
    assert got.shape == (1, 4, 3)
    assert got[0, :, 0].tolist() == [0, 1, 117, 255]  # was [0, 255, 255, 255]


def test_the_server_decodes_as_training_does():
    rgba = Image.new("RGBA", (6, 4), (200, 10, 10, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    wide = Image.new("RGB", (6, 4), (0, 0, 0))
    wide.putpixel((5, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    buf = io.BytesIO()
    wide.save(buf, "PNG", exif=exif)
    for data in (
        _png(rgba),
        buf.getvalue(),
        _png(Image.fromarray(np.full((3, 3), 40000, np.uint16))),
    ):
        trained = decode_image(data)
        served = serve_decode(data, "messages[0].content[1]", 10_000)
        assert served.mode == "RGB" and served.tobytes() == trained.tobytes()
    assert decode_image(_png(rgba)).getpixel((3, 3)) == (255, 255, 255)  # not black
    assert decode_image(buf.getvalue()).size == (4, 6)  # turned upright


def test_as_rgb_keeps_an_upright_rgb_image_as_it_is():
    im = Image.new("RGB", (3, 2), (1, 2, 3))
    assert as_rgb(im) is im


def test_the_processor_takes_an_image_as_the_data_pipeline_decodes_it(tiny_model_dir):
    # an RGBA image handed to the processor directly had its transparent pixels made black
    from polyvis.models.build import load_model

    _, processor = load_model(tiny_model_dir)
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    direct = processor.preprocess_images([rgba])
    decoded = processor.preprocess_images([decode_image(_png(rgba))])
    assert torch.equal(direct, decoded)
