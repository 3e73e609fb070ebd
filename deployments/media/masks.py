"""Masked edits as images, before any model math: OpenAI's `mask` read into diffusers' picture of a
mask, and the canvas and mask of an outpainting request (`placement`).

OpenAI's mask is a PNG the size of the (first) image whose fully transparent pixels (alpha 0) mark
where to edit; any other alpha keeps the pixel. diffusers' inpaint pipelines take a grayscale image
whose white pixels are repainted. `read_mask` turns the one into the other, so that the family math
runs diffusers' own mask processing on it.
"""

import numpy as np
from PIL import Image

from deployments.errors import InvalidInputError
from deployments.media.images import MAX_INPUT_PIXELS, inspect_image, open_image

EDIT, KEEP = 255, 0  # diffusers' mask values: white is repainted
CENTER = "center"


def check_mask_file(data: bytes, param: str = "mask", max_pixels: int = MAX_INPUT_PIXELS) -> None:
    """Refuses, from its header alone, a mask that is not a PNG (the only format OpenAI's masks come in
    that reliably carries an alpha channel) or is too large."""
    header = inspect_image(data, param, max_pixels)
    if header.format != "png":
        raise InvalidInputError(param, f"must be a PNG with an alpha channel, got a {header.format.upper()} file")


def read_mask(data: bytes, size: tuple[int, int], param: str = "mask") -> Image.Image:
    """The area to edit as a grayscale image (EDIT where the mask's alpha is 0, KEEP elsewhere), from a
    mask that must be a PNG with an alpha channel, `size` (the upright first image's), and mark
    something to edit."""
    image = open_image(data, param, formats=("png",))
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        raise InvalidInputError(
            param, f"has no alpha channel ({image.mode} PNG); mark the area to edit with fully transparent pixels "
            "(alpha 0), as OpenAI's masks do"
        )
    if image.size != size:
        raise InvalidInputError(param, f"must be the size of the image, {size[0]}x{size[1]}, got {image.width}x{image.height}")
    alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    if alpha.min() > 0:
        raise InvalidInputError(param, "has no fully transparent pixel, so nothing to edit (alpha 0 marks the area to edit)")
    return Image.fromarray(np.where(alpha == 0, EDIT, KEEP).astype(np.uint8))


def outpainting_canvas(
    image: Image.Image, edit: Image.Image | None, size: tuple[int, int], position: str | tuple[int, int]
) -> tuple[Image.Image, Image.Image]:
    """The canvas of `size` with `image` placed at `position` ("center" or its top-left corner), and the
    area to edit: the new area, and inside the image `edit`'s (the request's mask), if any.

    An image larger than the canvas is scaled down to fit (never up). The new area starts as the
    image's edge pixels stretched outwards (a neutral colour would be kept by strengths below 1)."""
    width, height = size
    scale = min(1.0, width / image.width, height / image.height)
    placed = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if scale < 1:
        image = image.resize(placed, Image.Resampling.LANCZOS)
        edit = None if edit is None else edit.resize(placed, Image.Resampling.NEAREST)
    w, h = placed
    x, y = ((width - w) // 2, (height - h) // 2) if position == CENTER else position
    if not (0 <= x <= width - w and 0 <= y <= height - h):
        raise InvalidInputError(
            "placement", f"puts the {w}x{h} image outside the {width}x{height} canvas: x may be 0 to {width - w} and "
            f"y 0 to {height - h}, got {x},{y}"
        )
    if placed == size and edit is None:
        raise InvalidInputError("size", f"{width}x{height} leaves no new area around the {w}x{h} image; ask for a larger size")
    pixels = np.pad(np.asarray(image), ((y, height - h - y), (x, width - w - x), (0, 0)), mode="edge")
    area = Image.new("L", size, EDIT)
    area.paste(edit if edit is not None else Image.new("L", placed, KEEP), (x, y))
    return Image.fromarray(pixels), area
