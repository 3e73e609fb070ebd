"""The staged engine reproduces the diffusers reference pipelines: <= 1e-4 on the float image
(the reference runs: tests/engine/conftest.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from deployments.media.images import decode_image
from tests.helpers import edit_request, image_bytes, random_image

STEPS = 3

CASES = [
    # variant, image sizes, prompt, negative prompt, CFG scale
    ("edit", [(96, 64)], "remove the watermark bottom-left", "blurry, low quality", 4.0),
    ("edit", [(64, 80)], "배경을 해변으로 바꿔줘", None, 1.0),
    ("edit-plus", [(96, 64)], "change the red dress to a blue long-sleeved shirt", " ", 4.0),
    ("edit-plus", [(64, 64)], "把文字换成 Buy One Get One Free", None, 4.0),
    ("edit-plus", [(96, 64), (48, 80)], "put the person of picture 1 into picture 2", "ugly", 3.0),
    ("edit-plus", [(64, 48), (64, 64), (80, 48)], "combine these three", None, 1.0),
]


@pytest.mark.parametrize("variant, sizes, prompt, negative, scale", CASES)
def test_staged_engine_matches_diffusers(stages, reference, monkeypatch, variant, sizes, prompt, negative, scale):
    uploads = tuple(image_bytes(random_image(w, h, seed=i)) for i, (w, h) in enumerate(sizes))
    request = edit_request(
        stages[variant].model, uploads, prompt=prompt, negative_prompt=negative, true_cfg_scale=scale, seed=11,
        num_inference_steps=STEPS,
    )
    s = stages[variant]
    latents = s.denoiser.denoise([s.encoder.encode(request)])[0]
    ours = s.decoder.decode_pixels(latents)

    expected = reference(
        variant,
        monkeypatch,
        [decode_image(data) for data in uploads],
        prompt=prompt,
        negative_prompt=negative,
        true_cfg_scale=scale,
        num_inference_steps=STEPS,
        seed=11,
    )
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4

    # The encoded PNG is the reference's 8-bit image, to within one level.
    png = np.asarray(Image.open(io.BytesIO(s.decoder.decode(latents).data)), dtype=np.int16)
    assert np.abs(png - (expected * 255).round().astype(np.int16)).max() <= 1


def test_explicit_output_size_matches_diffusers(stages, reference, monkeypatch):
    upload = image_bytes(random_image(96, 64))
    request = edit_request(
        stages["edit-plus"].model, [upload], prompt="make it night", negative_prompt=None, size="48x80", seed=3,
        num_inference_steps=STEPS,
    )
    s = stages["edit-plus"]
    ours = s.decoder.decode_pixels(s.denoiser.denoise([s.encoder.encode(request)])[0])
    expected = reference(
        "edit-plus", monkeypatch, [decode_image(upload)], prompt="make it night", height=80, width=48,
        num_inference_steps=STEPS, seed=3,
    )
    assert ours.shape == (80, 48, 3)
    assert np.abs(ours - expected).max() <= 1e-4
