"""Image bytes in and out: decoding uploads into RGB, encoding results as PNG, JPEG or WebP."""

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deployments.errors import InvalidInputError
from deployments.media.metadata import save_options


@dataclass(frozen=True)
class OutputSpec:
    """How the Decoder encodes the image. `compression` is the JPEG/WebP quality, 100 = best (OpenAI's meaning)."""

    format: str = "png"
    compression: int = 100


PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
ACCEPTED = "PNG, JPEG or WebP"
# Absolute ceiling on input pixels wherever an image is decoded (the online app sets a lower one):
# decoding allocates about 4 bytes per pixel before anything else can refuse the image.
MAX_INPUT_PIXELS = 64_000_000


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "png" | "jpeg" | "webp"
    width: int
    height: int


def inspect_image(data: bytes, param: str = "image", max_pixels: int = MAX_INPUT_PIXELS) -> ImageHeader:
    """Checks an upload from its bytes and header alone, before any pixel is decoded: one of the
    accepted formats by its signature (never by file name or declared type), a non-zero size within
    `max_pixels`."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InvalidInputError(param, f"is empty; upload a {ACCEPTED} image")
    fmt = _sniff(data)
    if fmt is None:
        raise InvalidInputError(param, f"is not a recognizable {ACCEPTED} image (judged by its bytes, not its name or type)")
    size = _png_header_size(data) if fmt == "png" else None
    if size is None:
        try:
            with _open(data, fmt) as image:  # reads the header only
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InvalidInputError(param, f"is a corrupt {fmt.upper()} file; its header could not be read") from e
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            size = (max_pixels + 1, 1)  # Pillow's own limit is looser than ours; fall through to ours
    width, height = size
    if width == 0 or height == 0:  # Pillow would only say it cannot identify the file
        raise InvalidInputError(param, f"has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInputError(param, f"is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    return ImageHeader(fmt, width, height)


def decode_image(data: bytes, param: str = "image", max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Decodes uploaded bytes into an RGB image, upright (EXIF orientation applied), after
    `inspect_image` has accepted them.

    Transparent pixels are composited over white (their hidden colour is arbitrary); 16-bit images are
    scaled to 8 bits rather than clipped; CMYK, grey and palette images become RGB.
    """
    return to_rgb(open_image(data, param, max_pixels))


def open_image(
    data: bytes, param: str = "image", max_pixels: int = MAX_INPUT_PIXELS, formats: tuple[str, ...] = tuple(PIL_FORMATS)
) -> Image.Image:
    """Decodes uploaded bytes, after `inspect_image` has accepted them as one of `formats`, into an
    upright image (EXIF orientation applied) in the file's own mode."""
    header = inspect_image(data, param, max_pixels)
    if header.format not in formats:
        allowed = " or ".join(f.upper() for f in formats)
        raise InvalidInputError(param, f"must be a {allowed} file, got a {header.format.upper()} one")
    try:
        image = _open(data, header.format)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(param, f"is corrupt or truncated and could not be decoded ({e})") from e
    return ImageOps.exif_transpose(image)


def turned_by_exif(data: bytes) -> bool:
    """Whether an upload's EXIF orientation turns or mirrors it (its upright pixels aren't its stored
    ones); False for anything that isn't a readable image (validation refuses those elsewhere)."""
    fmt = _sniff(data) if isinstance(data, (bytes, bytearray)) else None
    if fmt is None:
        return False
    try:
        with _open(data, fmt) as image:  # the header only
            return image.getexif().get(ExifTags.Base.Orientation, 1) != 1
    except Exception:  # a corrupt header: inspect_image says why
        return False


def _open(data: bytes, fmt: str) -> Image.Image:
    """Opens `data` as `fmt` only (lazily: pixels are read on `load`), Pillow's bomb warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if it has none where the format puts it."""
    if len(data) < 24 or data[12:16] != b"IHDR":
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


def quantized(pixels: np.ndarray) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] as 8-bit values, exactly as diffusers' `numpy_to_pil` quantizes it."""
    return (pixels * 255).round().astype("uint8")


def encode_image(image: np.ndarray, output: OutputSpec, provenance: dict | None = None) -> bytes:
    """Encodes an (H, W, 3) uint8 image (`quantized`), with its provenance record if given."""
    options = {} if output.format == "png" else {"quality": output.compression}
    if provenance is not None:
        options.update(save_options(provenance, output.format))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=PIL_FORMATS[output.format], **options)
    return buffer.getvalue()
