"""The quality report on synthetic images with known answers (deployments/workflows/quality.py)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.contracts import Reference
from deployments.workflows.quality import SSIM_C1, quality_report, reference_of

RNG = np.random.default_rng(0)
PICTURE = torch.from_numpy(RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _reference(pixels: torch.Tensor, keep: torch.Tensor | None = None, input_size=None) -> Reference:
    return Reference(pixels, keep, input_size or (pixels.shape[1], pixels.shape[0]))


def test_an_unchanged_image_changed_nothing_and_kept_everything():
    report = quality_report(PICTURE.clone(), _reference(PICTURE))
    assert report.changed_fraction == 0
    assert report.unchanged_ssim == 1
    assert report.unchanged_psnr_db is None  # identical: infinite
    assert (report.input_size, report.output_size, report.aspect_ratio_change) == ("64x48", "64x48", 0)


def test_a_half_changed_image_changed_half_and_kept_the_other_half():
    edited = PICTURE.clone()
    edited[:, :32] = edited[:, :32] + 128  # every channel of the left half moves by 128 (mod 256)
    report = quality_report(edited, _reference(PICTURE))
    assert report.changed_fraction == 0.5
    assert report.unchanged_psnr_db is None  # the right half is the same
    assert 0 < report.unchanged_ssim < 1  # the window reaches across into the changed half


def test_a_drift_below_the_threshold_is_unchanged_and_lowers_psnr_and_ssim_by_the_known_amounts():
    flat = torch.full((32, 32, 3), 100, dtype=torch.uint8)
    report = quality_report(flat + 10, _reference(flat))
    assert report.changed_fraction == 0
    assert report.unchanged_psnr_db == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    # constant images: no variance, so SSIM is its luminance term alone
    assert report.unchanged_ssim == pytest.approx((2 * 100 * 110 + SSIM_C1) / (100**2 + 110**2 + SSIM_C1), abs=1e-6)


def test_with_a_mask_the_kept_region_is_outside_it():
    keep = torch.zeros(48, 64, dtype=torch.bool)
    keep[:, 32:] = True
    edited = PICTURE.clone()
    edited[:, :32] = edited[:, :32] + 128  # inside the mask: changes freely
    edited[:, 40:] = (edited[:, 40:].int() + 3).clamp(max=255).to(torch.uint8)  # outside: a drift counted against it
    report = quality_report(edited, _reference(PICTURE, keep))
    drift = (edited[:, 32:].double() - PICTURE[:, 32:].double()) ** 2
    assert report.unchanged_psnr_db == pytest.approx(10 * math.log10(255**2 / drift.mean().item()), abs=1e-6)
    assert report.changed_fraction == 0.5  # the drift is below the threshold
    everything_edited = quality_report(edited, _reference(PICTURE, torch.zeros_like(keep)))
    assert everything_edited.unchanged_ssim is None and everything_edited.unchanged_psnr_db is None


def test_size_and_aspect_ratio_change():
    report = quality_report(PICTURE, _reference(PICTURE, input_size=(100, 50)))
    assert report.input_size == "100x50" and report.output_size == "64x48"
    assert report.aspect_ratio_change == pytest.approx((64 / 48) / 2 - 1, abs=1e-6)


def test_the_reference_is_the_input_at_the_output_size_with_the_mask_as_kept_area():
    image = Image.fromarray(PICTURE.numpy())
    edit_area = Image.new("L", (64, 48), 0)
    edit_area.paste(255, (0, 0, 32, 48))
    reference = reference_of(image, edit_area, (32, 24), (64, 48))
    assert reference.pixels.shape == (24, 32, 3) and reference.pixels.dtype == torch.uint8
    assert reference.keep[:, :16].sum() == 0 and reference.keep[:, 16:].all()
    assert reference_of(image, None, (64, 48), (64, 48)).pixels.equal(PICTURE)


def test_a_large_image_is_compared_at_about_256_pixels_and_still_exactly_1_when_unchanged():
    large = torch.from_numpy(RNG.integers(0, 256, (600, 520, 3), dtype=np.uint8))  # averaged down by 2
    assert quality_report(large.clone(), _reference(large)).unchanged_ssim == 1
    edited = large.clone()
    edited[:, :260] = edited[:, :260] + 128
    report = quality_report(edited, _reference(large))
    assert report.changed_fraction == 0.5 and 0.5 < report.unchanged_ssim < 1


def _pairs():
    """Image pairs of known kinds: noise against noise, a smooth image against a noisy, shifted, darker copy."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:64, 0:80]
    smooth = np.stack([xs * 3, ys * 3, (xs + ys) * 1.5], axis=-1).clip(0, 255).astype(np.uint8)
    degraded = (np.roll(smooth, 2, axis=1) * 0.8 + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
    return [(noise, other), (smooth, degraded), (smooth, smooth // 2 + 60)]


@pytest.mark.parametrize("pair", range(3))
def test_ssim_equals_scikit_image_structural_similarity(pair):
    """The report's SSIM against scikit-image's (Gaussian weights, sigma 1.5, population covariances: Wang et
    al.'s), over the pixels both compute alike: skimage averages its map without the 5-pixel border its
    window overhangs, so the report's region here is that interior."""
    from skimage.metrics import structural_similarity

    out, ref = _pairs()[pair]
    expected = structural_similarity(out, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                                     channel_axis=-1)
    interior = torch.zeros(out.shape[:2], dtype=torch.bool)
    interior[5:-5, 5:-5] = True
    report = quality_report(torch.from_numpy(out), _reference(torch.from_numpy(ref), keep=interior))
    assert report.unchanged_ssim == pytest.approx(expected, abs=2e-6)
