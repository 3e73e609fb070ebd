"""The result cache's key and its bound (deployments/workflows/result_cache.py)."""

import pytest

from deployments.checkpoints.loader import resolve_model
from deployments.contracts import EditedImage, EditRequest
from deployments.request.binding import parse
from deployments.workflows.result_cache import ResultCache, result_key
from tests.helpers import image_bytes, random_image

IMAGE = image_bytes(random_image(32, 32, seed=1))


def image(size: int, name: str = "") -> EditedImage:
    return EditedImage(request_id=name, data=b"x" * size, format="png", width=1, height=1, seed=0)


def test_least_recently_used_images_go_first_within_the_byte_bound():
    cache = ResultCache(max_bytes=100)
    cache.put("a", image(40))
    cache.put("b", image(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", image(40))  # 120 bytes: b goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", image(101))  # never fits: not kept, nothing evicted for it
    assert cache.get("huge") is None
    assert cache.stats() == {"entries": 2, "bytes": 80, "hits": 3, "misses": 2, "evictions": 1}


@pytest.fixture(scope="module")
def key(tiny_checkpoints):
    model = resolve_model(tiny_checkpoints["edit-plus"]).request_model()

    def key_of(seed: int = 1, request_id: str = "r", derived_from: dict | None = None, **values) -> str:
        parameters = parse(model, {"image": [IMAGE], "prompt": "make it pink", "seed": 0, **values})
        return result_key(EditRequest(parameters, request_id=request_id, derived_from=derived_from), seed, "tiny", {})

    return key_of


def test_the_key_is_every_input_of_the_image_and_nothing_else(key):
    same = key()
    assert key(request_id="other") == same  # the request's own id, its guard and n don't make the image
    assert key(guard='{"max_changed_fraction": 0.5}') == same and key(n=2) == same
    for other in (key(seed=2), key(prompt="make it blue"), key(num_inference_steps=3), key(output_format="jpeg"),
                  key(image=[image_bytes(random_image(32, 32, seed=2))]), key(true_cfg_scale=2.0, negative_prompt=" "),
                  key(derived_from={"model": "a chain's earlier link"})):
        assert other != same
