"""Image bytes in and out: decoding uploads into RGB, encoding results as PNG, JPEG or WebP."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.contracts import OutputSpec
from deployments.errors import InvalidInputError

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def decode_image(data: bytes, param: str = "image") -> Image.Image:
    """Decodes uploaded bytes into an RGB image, upright (EXIF orientation applied).

    Transparent pixels are composited over white (their hidden colour is arbitrary); 16-bit images are
    scaled to 8 bits rather than clipped.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InvalidInputError(param, "is empty; upload a PNG, JPEG or WebP image")
    width, height = _png_header_size(data) or (1, 1)
    if width == 0 or height == 0:  # Pillow would only say it cannot identify the file
        raise InvalidInputError(param, f"has zero size ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError as e:
        raise InvalidInputError(param, "is not a recognizable image; upload a PNG, JPEG or WebP file") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(param, f"is corrupt or truncated and could not be decoded ({e})") from e
    return to_rgb(ImageOps.exif_transpose(image))


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey (the only way image files yield these modes): scale to 8 bits; a plain
        # convert would clip everything above 255 to white.
        array = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255)
        image = Image.fromarray(array.astype(np.uint8))  # (H, W) uint8 -> mode "L"
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_image(pixels: np.ndarray, output: OutputSpec) -> bytes:
    """Encodes an (H, W, 3) float image in [0, 1] exactly as diffusers' `numpy_to_pil` quantizes it."""
    image = Image.fromarray((pixels * 255).round().astype("uint8"))
    buffer = io.BytesIO()
    if output.format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=PIL_FORMATS[output.format], quality=output.compression)
    return buffer.getvalue()
