"""Bad input to the stages ends in a typed error naming the field, never an assert or a crash."""

import pytest

from deployments.contracts import EditRequest
from deployments.errors import EditError, InvalidInputError
from tests.helpers import image_bytes, random_image

GOOD = image_bytes(random_image(64, 64))


def encode_error(stages, variant, **kwargs) -> InvalidInputError:
    request = EditRequest(**{"prompt": "make it blue", "num_inference_steps": 2, **kwargs})
    with pytest.raises(InvalidInputError) as info:
        stages[variant].encoder.encode(request)
    return info.value


def test_undecodable_bytes(stages):
    error = encode_error(stages, "edit-plus", images=(GOOD, b"GIF89a-not-really"))
    assert error.param == "image[1]" and "not a recognizable PNG, JPEG or WebP image" in error.message


def test_too_many_images_for_edit_model(stages):
    error = encode_error(stages, "edit", images=(GOOD, GOOD))
    assert error.param == "image" and "at most 1 image(s), got 2" in error.message


def test_size_not_a_multiple_of_the_latent_grid(stages):
    error = encode_error(stages, "edit-plus", images=(GOOD,), width=100, height=64)
    assert error.param == "size" and "multiples of 8" in error.message


@pytest.mark.parametrize("width, height", [(4000, 10), (10, 4000), (300, 1)])
def test_too_elongated_images(stages, width, height):
    error = encode_error(stages, "edit-plus", images=(image_bytes(random_image(width, height)),))
    assert error.param == "image" and "too elongated" in error.message and "16:1" in error.message


def test_an_unexpected_failure_fails_only_its_request(stages, monkeypatch):
    encoder = stages["edit-plus"].encoder
    real = encoder.family.encode

    def flaky(request, images):
        if request.prompt == "boom":
            raise RuntimeError("simulated bug")
        return real(request, images)

    monkeypatch.setattr(encoder.family, "encode", flaky)
    requests = [EditRequest(images=(GOOD,), prompt=p, num_inference_steps=2) for p in ("ok", "boom", "fine")]
    results = encoder.encode_batch(requests)
    assert [type(r).__name__ for r in results] == ["Conditioning", "EditError", "Conditioning"]
    assert results[1].status == 500 and "RuntimeError" in results[1].message


def test_a_bad_request_fails_alone_in_a_batch(stages):
    good = EditRequest(images=(GOOD,), prompt="ok", num_inference_steps=2)
    bad = EditRequest(images=(b"junk",), prompt="ok", num_inference_steps=2)
    results = stages["edit-plus"].encoder.encode_batch([good, bad, good])
    assert [isinstance(r, EditError) for r in results] == [False, True, False]
    assert results[1].param == "image"
