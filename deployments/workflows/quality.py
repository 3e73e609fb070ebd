"""The quality report of an edited image: how much changed, and how well the rest was kept.

Computed by the Decoder from the 8-bit output and the request's Reference (image 1 at the output
size, and the area to keep when a mask was given), with no model:

- `changed_fraction`: the share of output pixels p with max over channels |out(p) - in(p)| > 255 x
  CHANGE_THRESHOLD (0.1: a visible change, above a VAE round trip's drift).
- `unchanged_ssim`, `unchanged_psnr_db`: SSIM and PSNR of the region that should be unchanged — outside
  the mask when the request had one, else the pixels that did not change — against the input. SSIM is
  Wang et al.'s (Gaussian window sigma 1.5, K1 0.01, K2 0.03, on 0-255 values, the images first
  averaged down to a short side of about 256 as their reference code does), its map computed per
  channel over the whole image and averaged over the region; PSNR = 10 log10(255^2 / MSE) over the
  region's pixels and channels. Null when the region is empty, PSNR also when it is identical
  (infinite).
- `input_size`, `output_size` ("WxH") and `aspect_ratio_change` = (out_w / out_h) / (in_w / in_h) - 1.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deployments.contracts import Reference
from deployments.media.masks import KEEP

CHANGE_THRESHOLD = 0.1  # of the 0-255 range: a pixel whose channels all moved less is unchanged
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # an 11-tap Gaussian window, as Wang et al.
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
SSIM_SCALE = 256  # images are compared at about this short side (Wang et al.'s automatic downsampling)


def reference_of(image: Image.Image, edit_area: Image.Image | None, size: tuple[int, int], input_size: tuple[int, int]) -> Reference:
    """The Reference of an edit of `image` (RGB; an outpainting canvas) to an output of `size` (width,
    height): resized as diffusers resizes inputs (Lanczos), and `edit_area` (deployments/media/masks.py) too."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    if edit_area is not None and edit_area.size != size:
        edit_area = edit_area.resize(size, Image.Resampling.NEAREST)
    keep = None if edit_area is None else torch.from_numpy(np.asarray(edit_area) == KEEP)
    return Reference(torch.from_numpy(np.array(image)), keep, input_size)


@dataclass(frozen=True)
class QualityReport:
    changed_fraction: float
    unchanged_ssim: float | None
    unchanged_psnr_db: float | None
    input_size: str
    output_size: str
    aspect_ratio_change: float

    def as_dict(self) -> dict:
        return asdict(self)


def quality_report(output: torch.Tensor, reference: Reference) -> QualityReport:
    """The report of `output`, an (H, W, 3) uint8 image the size of `reference.pixels`."""
    out, ref = output.to(torch.float32), reference.pixels.to(torch.float32)
    changed = (out - ref).abs().amax(dim=-1) > 255 * CHANGE_THRESHOLD
    region = reference.keep if reference.keep is not None else ~changed
    height, width = output.shape[:2]
    in_width, in_height = reference.input_size
    return QualityReport(
        changed_fraction=_rounded(changed.double().mean().item()),
        unchanged_ssim=_rounded(_ssim_map(out, ref)[region].mean().item()) if region.any() else None,
        unchanged_psnr_db=_psnr(out[region], ref[region]),
        input_size=f"{in_width}x{in_height}",
        output_size=f"{width}x{height}",
        aspect_ratio_change=_rounded((width / height) / (in_width / in_height) - 1),
    )


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (H, W) SSIM map of two (H, W, 3) images, averaged over channels. As in Wang et al.'s
    reference code, the images are first averaged down by f = max(1, round(min(H, W) / 256)) (a
    1024x1024 image is compared at 256x256: ~20x less work, the scale SSIM was designed for); the
    map is then spread back over the f x f pixels each of its values covers. For x == y every term of
    the numerator equals the denominator's bit for bit, so an unchanged image's SSIM is exactly 1."""
    height, width = x.shape[:2]
    f = max(1, round(min(height, width) / SSIM_SCALE))
    # (3, 1, H / f, W / f), in float64: variances are differences of large numbers
    x, y = (F.avg_pool2d(image.permute(2, 0, 1)[:, None], f).double() for image in (x, y))
    mu_x, mu_y, xx, yy, xy = _blurred(torch.cat([x, y, x * x, y * y, x * y])).split(3)  # one filter pass for all
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2))
    spread = ssim.mean(dim=0, keepdim=True).repeat_interleave(f, -2).repeat_interleave(f, -1)
    return F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2]), mode="replicate")[0, 0].float()


def _blurred(planes: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) filtered by the separable Gaussian window, edges replicated (same size out)."""
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    window = torch.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    window = window / window.sum()
    padded = F.pad(planes, (SSIM_RADIUS,) * 4, mode="replicate")
    return F.conv2d(F.conv2d(padded, window.view(1, 1, 1, -1)), window.view(1, 1, -1, 1))


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float | None:
    if out.numel() == 0:
        return None
    mse = ((out.double() - ref.double()) ** 2).mean().item()
    return None if mse == 0 else _rounded(10 * math.log10(255**2 / mse))


def _rounded(value: float) -> float:
    return round(value, 6)
