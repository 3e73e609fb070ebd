"""Masked edits (OpenAI's `mask`) and outpainting (`placement`): parity with diffusers'
QwenImageEditInpaintPipeline for Qwen-Image-Edit, and the invariants every family that takes masks
keeps (Edit-Plus has no reference pipeline): outside the mask the final latents are the input's,
exactly; an all-edit mask at strength 1 adds nothing to the edit; batching changes nothing."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.batching.staggered import denoise_joining
from deployments.contracts import Latents
from deployments.errors import InvalidInputError
from deployments.families.qwen_image_edit.parameters import first_step
from deployments.media.images import OutputSpec, decode_image, quantized
from deployments.media.masks import EDIT, outpainting_canvas
from tests.helpers import edit_request, image_bytes, random_image

STEPS = 4
WIDTH, HEIGHT = 96, 64
UPLOAD = image_bytes(random_image(WIDTH, HEIGHT, seed=0))


def area(name: str, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W) bool: where to edit."""
    y, x = np.mgrid[:height, :width]
    return {
        "rectangle": (x >= 24) & (x < 72) & (y >= 16) & (y < 48),
        "irregular": ((x - 30) ** 2 + (y - 28) ** 2 < 15**2) | ((np.abs(x - y - 30) < 4) & (x > 40)),
        "all": np.ones((height, width), bool),
        "tiny": (x >= 40) & (x < 43) & (y >= 30) & (y < 33),
    }[name]


def openai_mask(edit: np.ndarray) -> bytes:
    """OpenAI's picture of `edit`: an RGBA PNG, fully transparent where to edit."""
    rgba = np.full((*edit.shape, 4), 180, np.uint8)
    rgba[..., 3] = np.where(edit, 0, 255)
    return image_bytes(Image.fromarray(rgba, "RGBA"))


MASK_BYTES = openai_mask(area("rectangle"))


def diffusers_mask(edit: np.ndarray) -> Image.Image:
    """diffusers' picture of `edit`: white where to repaint."""
    return Image.fromarray(np.where(edit, 255, 0).astype(np.uint8))


def run(s, request) -> tuple[torch.Tensor, np.ndarray]:
    latents = s.denoiser.denoise([s.encoder.encode(request)])[0]
    return latents.latents, s.decoder.decode_pixels(latents)


def denoise_keeping_image_latents(denoiser, conditioning) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final latents, the image latents the job sampled (1, L, C) and its mask (L, C)."""
    job = denoiser.start(conditioning)
    while not job.done:
        assert not denoiser.step([job])
    return denoiser.finish(job).latents, job.state["image_latents"][0], job.tensors["mask"]


def pixels_of(s, conditioning, latents: torch.Tensor) -> np.ndarray:
    return s.decoder.decode_pixels(Latents("", latents, conditioning.height, conditioning.width, 0, OutputSpec()))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


PARITY_CASES = [  # mask, strength, negative prompt (None: CFG off), seed
    ("rectangle", 0.6, "blurry", 1),
    ("rectangle", 0.3, None, 2),
    ("irregular", 1.0, " ", 3),
    ("irregular", 0.6, None, 4),
    ("all", 1.0, None, 5),
    ("all", 0.3, " ", 6),
    ("tiny", 0.6, " ", 7),
    ("tiny", 1.0, None, 8),
]


@pytest.mark.parametrize("mask, strength, negative, seed", PARITY_CASES)
def test_masked_edit_matches_diffusers_inpaint_pipeline(stages, reference, monkeypatch, mask, strength, negative, seed):
    s = stages["edit"]
    request = edit_request(
        s.model, [UPLOAD], prompt="remove the watermark bottom-left", negative_prompt=negative, true_cfg_scale=4.0,
        seed=seed, num_inference_steps=STEPS, mask=openai_mask(area(mask)), strength=strength,
    )
    latents = s.denoiser.denoise([s.encoder.encode(request)])[0]
    ours = s.decoder.decode_pixels(latents)
    expected = reference(
        "inpaint", monkeypatch, [decode_image(UPLOAD)], mask_image=diffusers_mask(area(mask)),
        prompt="remove the watermark bottom-left", negative_prompt=negative, true_cfg_scale=4.0, strength=strength,
        num_inference_steps=STEPS, seed=seed,
    )
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4
    png = np.asarray(Image.open(io.BytesIO(s.decoder.decode(latents).data)), dtype=np.int16)
    assert np.abs(png - (expected * 255).round().astype(np.int16)).max() <= 1


MASKED_FAMILIES = [  # variant, images, mask on image 1
    ("edit", [UPLOAD], "rectangle"),
    ("edit-plus", [UPLOAD, image_bytes(random_image(64, 80, seed=9))], "irregular"),
]


@pytest.mark.parametrize("variant, images, mask", MASKED_FAMILIES)
def test_outside_the_mask_the_final_latents_are_the_inputs(stages, variant, images, mask):
    s = stages[variant]
    request = edit_request(
        s.model, images, prompt="make it night", seed=3, num_inference_steps=STEPS, mask=openai_mask(area(mask)),
        strength=0.8,
    )
    conditioning = s.encoder.encode(request)
    final, image_latents, packed_mask = denoise_keeping_image_latents(s.denoiser, conditioning)
    keep = packed_mask == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(final[keep], image_latents[keep])  # exactly: the last blend puts the clean latents back
    assert not torch.equal(final[~keep], image_latents[~keep])

    # The output is image 1's framing (Edit-Plus included), and in pixels the kept area is close to what
    # the VAE makes of the input's latents (the decoder mixes neighbouring latents, so not equal).
    pixels, reconstruction = (pixels_of(s, conditioning, latents) for latents in (final, image_latents))
    assert (conditioning.width, conditioning.height) == (320, 224)  # image 1's aspect ratio at the model's area
    kept = ~np.asarray(Image.fromarray(area(mask)).resize((conditioning.width, conditioning.height), Image.NEAREST))
    value = psnr(pixels[kept], reconstruction[kept])
    size = (conditioning.width, conditioning.height)
    resized = np.asarray(decode_image(images[0]).resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255
    print(
        f"\n{variant}: PSNR of the kept area against the input's VAE reconstruction {value:.1f} dB; against the "
        f"input {psnr(pixels[kept], resized[kept]):.1f} dB, where the (random, tiny) VAE's own reconstruction "
        f"reaches {psnr(reconstruction[kept], resized[kept]):.1f} dB"
    )
    assert value > 25

    # The Decoder's quality report measures the same kept area, on the 8-bit image, against the input.
    report = s.decoder.decode(s.denoiser.denoise([conditioning])[0]).quality
    out, ref = quantized(pixels)[kept].astype(np.float64), np.asarray(decode_image(images[0]).resize(size, Image.LANCZOS))[kept]
    assert report["unchanged_psnr_db"] == pytest.approx(10 * np.log10(255**2 / np.mean((out - ref) ** 2)), abs=1e-5)
    assert report["input_size"] == "96x64" and report["output_size"] == "320x224" and 0 < report["unchanged_ssim"] < 1


@pytest.mark.parametrize("variant, images, mask", MASKED_FAMILIES)
def test_an_all_edit_mask_at_strength_1_adds_nothing_to_the_edit(stages, variant, images, mask):
    """The mask's blend and `strength` change nothing when everything is edited from pure noise: the
    result is the unmasked edit of the same (sampled) image latents and noise, bit for bit."""
    s = stages[variant]
    request = edit_request(
        s.model, images, prompt="make it night", seed=4, num_inference_steps=STEPS, mask=openai_mask(area("all")),
        strength=1.0,
    )
    masked = s.encoder.encode(request)
    job = s.denoiser.start(masked)
    sampled, noise = job.tensors["image_latents"], job.state["noise"]
    plain_tensors = {name: t for name, t in masked.tensors.items() if name not in ("mask", "image_posterior", "latents_normalization")}
    plain = dataclasses.replace(masked, tensors={**plain_tensors, "image_latents": sampled.cpu()})
    plain_job = s.denoiser.start(plain)
    plain_job.latents = noise.clone()
    for each in (job, plain_job):
        while not each.done:
            assert not s.denoiser.step([each])
    assert torch.equal(s.denoiser.finish(job).latents, s.denoiser.finish(plain_job).latents)


def test_masked_and_unmasked_requests_batched_match_solo(stages):
    s = stages["edit-plus"]
    other = image_bytes(random_image(64, 96, seed=2))
    requests = [
        dict(images=[UPLOAD], prompt="make the sky pink", negative_prompt=" ", seed=1, num_inference_steps=5),
        dict(images=[UPLOAD], prompt="remove the car", negative_prompt=None, seed=2, num_inference_steps=5,
             mask=openai_mask(area("rectangle")), strength=0.3),
        dict(images=[UPLOAD], prompt="add a hat", negative_prompt=" ", seed=3, num_inference_steps=6,
             mask=openai_mask(area("irregular")), strength=0.6),
        dict(images=[UPLOAD], prompt="make it a painting", negative_prompt=None, seed=4, num_inference_steps=4,
             mask=openai_mask(area("tiny")), strength=1.0),
        dict(images=[other], prompt="extend the beach", negative_prompt=" ", seed=5, num_inference_steps=4,
             size="96x112", placement="16,8", strength=1.0),
    ]
    conditionings = [s.encoder.encode(edit_request(s.model, **request)) for request in requests]
    solo = [s.denoiser.denoise([c])[0].latents for c in conditionings]
    batched, forwards = denoise_joining(s.denoiser, conditionings, [0, 1, 0, 2, 1])
    for i, (together, alone) in enumerate(zip(batched, solo)):
        assert torch.allclose(together, alone, atol=1e-5, rtol=0), f"request {i}"
    steps_run = [r["num_inference_steps"] - first_step(r["num_inference_steps"], r.get("strength", 1)) for r in requests]
    assert steps_run == [5, 2, 4, 4, 4]  # strength 0.3 of 5 steps runs 2 (diffusers' rule), 0.6 of 6 runs 4
    assert len(forwards) < sum(steps_run)  # masked and unmasked rows shared forwards


def test_outpainting_is_the_masked_edit_of_its_canvas(stages, reference, monkeypatch):
    """Placing a 224x224 image at the centre of a 320x224 canvas (the model's area at 10:7, so diffusers
    doesn't resize it) edits the new area as diffusers' inpaint pipeline edits that canvas and mask."""
    s = stages["edit"]
    upload = image_bytes(random_image(224, 224, seed=6))
    request = edit_request(
        s.model, [upload], prompt="extend the scene", seed=8, num_inference_steps=STEPS, size="320x224",
        placement="center", strength=1.0,
    )
    ours = run(s, request)[1]
    canvas, edit = outpainting_canvas(decode_image(upload), None, (320, 224), "center")
    assert np.asarray(edit)[:, 48:272].max() == 0 and (np.asarray(edit)[:, :48] == EDIT).all()
    expected = reference(
        "inpaint", monkeypatch, [canvas], mask_image=edit, prompt="extend the scene", negative_prompt=" ", strength=1.0,
        num_inference_steps=STEPS, seed=8,
    )
    assert np.abs(ours - expected).max() <= 1e-4


@pytest.mark.parametrize("variant", ["edit", "edit-plus"])
def test_outpainting_makes_the_asked_size_and_keeps_the_placed_image(stages, variant):
    s = stages[variant]
    request = edit_request(
        s.model, [image_bytes(random_image(40, 48, seed=7))], prompt="extend the sky", seed=2, num_inference_steps=STEPS,
        size="128x80", placement="8,16", strength=1.0, mask=openai_mask(area("rectangle", 40, 48)),
    )
    conditioning = s.encoder.encode(request)
    assert (conditioning.width, conditioning.height) == (128, 80)
    final, image_latents, packed_mask = denoise_keeping_image_latents(s.denoiser, conditioning)
    keep = packed_mask == 0
    assert torch.equal(final[keep], image_latents[keep])
    # the edit area: everything outside the placed 40x48 image, and the request's mask inside it
    patch = s.encoder.family.pipe.vae_scale_factor * 2  # pixels per packed token
    tokens = packed_mask[:, 0].reshape(80 // patch, 128 // patch).bool()  # channel 0 of each patch's top-left latent
    top, right, placed = tokens[: 16 // patch], tokens[:, (8 + 40) // patch + 1 :], tokens[16 // patch : 64 // patch, 8 // patch : 24 // patch]
    assert top.all() and right.all() and not placed.any()  # the new area is edited, the placed image's left part kept
    edited = s.decoder.decode(s.denoiser.denoise([conditioning])[0])
    assert (edited.width, edited.height) == (128, 80)
    assert (edited.quality["input_size"], edited.quality["output_size"]) == ("40x48", "128x80")
    assert edited.quality["aspect_ratio_change"] == pytest.approx((128 / 80) / (40 / 48) - 1, abs=1e-6)


@pytest.mark.parametrize(
    "size, placement, message",
    [
        ("64x64", "40,0", "placement: puts the 48x48 image outside the 64x64 canvas: x may be 0 to 16"),
        ("48x48", "center", "size: 48x48 leaves no new area around the 48x48 image"),
    ],
)
def test_outpainting_refusals_name_the_field(stages, size, placement, message):
    s = stages["edit"]
    with pytest.raises(InvalidInputError) as refused:
        s.encoder.encode(edit_request(s.model, [image_bytes(random_image(48, 48))], prompt="extend", size=size, placement=placement))
    assert refused.value.message.startswith(message)


def test_a_larger_image_is_scaled_down_onto_the_canvas(stages):
    s = stages["edit"]
    request = edit_request(
        s.model, [image_bytes(random_image(320, 320, seed=1))], prompt="extend", size="160x96", placement="0,0",
        num_inference_steps=2,
    )
    conditioning = s.encoder.encode(request)
    assert (conditioning.width, conditioning.height) == (160, 96)  # the image became 96x96 at the left


@pytest.mark.parametrize(
    "mask, message",
    [
        (image_bytes(random_image(WIDTH, HEIGHT), "JPEG"), "mask: must be a PNG with an alpha channel, got a JPEG file"),
        (image_bytes(random_image(WIDTH, HEIGHT)), "mask: has no alpha channel (RGB PNG)"),
        (openai_mask(np.ones((HEIGHT, WIDTH + 1), bool)), "mask: must be the size of the image, 96x64, got 97x64"),
        (openai_mask(np.zeros((HEIGHT, WIDTH), bool)), "mask: has no fully transparent pixel"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "mask: is a corrupt PNG file"),
    ],
)
def test_mask_refusals_name_the_field(stages, mask, message):
    s = stages["edit"]
    with pytest.raises(InvalidInputError) as refused:  # the file's header at validation, its pixels in the Encoder
        s.encoder.encode(edit_request(s.model, [UPLOAD], prompt="edit", mask=mask))
    assert refused.value.message.startswith(message)


def test_a_masked_edit_s_previews_keep_the_image_outside_the_mask(stages):
    s = stages["edit"]
    request = edit_request(s.model, [UPLOAD], prompt="add a hat", seed=5, num_inference_steps=STEPS, mask=MASK_BYTES, strength=0.6)
    job = s.denoiser.start(s.encoder.encode(request))
    job.preview_after = frozenset({1})
    assert len(job.timesteps) == 3 and job.scheduler.begin_index == 1  # strength 0.6 of 4 steps
    assert not s.denoiser.step([job])
    preview = s.denoiser.take_preview(job).latents
    keep = job.tensors["mask"].cpu() == 0
    assert torch.equal(preview[keep], job.state["image_latents"][0].cpu()[keep])
    assert torch.isfinite(preview).all() and not torch.equal(preview[~keep], job.state["image_latents"][0].cpu()[~keep])
