import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidInputError
from deployments.media.images import OutputSpec, decode_image, encode_image, quantized
from tests.helpers import image_bytes, random_image


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a recognizable PNG, JPEG or WebP image"),
        (image_bytes(random_image(64, 48))[:200], "truncated"),
    ],
)
def test_bad_bytes_raise_invalid_input(data, fragment):
    with pytest.raises(InvalidInputError) as info:
        decode_image(data, "image[1]")
    assert info.value.param == "image[1]"
    assert fragment in info.value.message


@pytest.mark.parametrize("width, height", [(0, 0), (0, 48), (64, 0)])
def test_zero_size_image_is_refused(width, height):
    png = bytearray(image_bytes(random_image(64, 48)))
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    with pytest.raises(InvalidInputError) as info:
        decode_image(bytes(png))
    assert info.value.param == "image"
    assert f"zero size ({width}x{height})" in info.value.message


def test_exif_orientation_is_applied():
    image = random_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(image_bytes(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16", "LA", "RGBA"])
def test_any_mode_becomes_rgb(mode):
    source = random_image(16, 8).convert("RGBA").convert(mode) if mode != "I;16" else Image.new("I;16", (16, 8), 40000)
    decoded = decode_image(image_bytes(source, "JPEG" if mode == "CMYK" else "PNG"))
    assert decoded.mode == "RGB" and decoded.size == (16, 8)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    decoded = decode_image(image_bytes(Image.new("I;16", (4, 4), 32768), "PNG"))
    assert np.asarray(decoded)[0, 0].tolist() == [128, 128, 128]


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    assert np.asarray(decode_image(image_bytes(rgba, "PNG")))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_encode_image_formats(fmt, magic):
    pixels = np.random.RandomState(0).rand(24, 32, 3).astype(np.float32)
    data = encode_image(quantized(pixels), OutputSpec(format=fmt, compression=90))
    assert data.startswith(magic)
    assert Image.open(__import__("io").BytesIO(data)).size == (32, 24)


def test_png_is_diffusers_quantization():
    pixels = np.random.RandomState(0).rand(8, 8, 3).astype(np.float32)
    decoded = np.asarray(decode_image(encode_image(quantized(pixels), OutputSpec())))
    assert np.array_equal(decoded, (pixels * 255).round().astype(np.uint8))
