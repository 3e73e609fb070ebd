"""Batching is real: 8 concurrent edits run as fewer than 8 batches in every stage."""

from concurrent.futures import ThreadPoolExecutor

from ray import serve

from tests.helpers import image_bytes, random_image
from tests.serve.support import APP

PHOTO = image_bytes(random_image(64, 64, seed=3))


def stage_stats() -> dict[str, dict[str, int]]:
    return {name: serve.get_deployment_handle(name, APP).stats.remote().result() for name in ("Encoder", "Denoiser", "Decoder")}


def test_concurrent_requests_share_batches(client):
    before = stage_stats()

    def one(i):
        files = [("image", ("p.png", PHOTO, "image/png"))]
        return client.post("/v1/images/edits", files=files, data={"prompt": f"edit number {i}", "num_inference_steps": "2", "seed": str(i)})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert [r.status_code for r in responses] == [200] * 8

    after = stage_stats()
    for name in ("Encoder", "Decoder"):
        items = after[name]["items"] - before[name]["items"]
        batches = after[name]["batches"] - before[name]["batches"]
        assert items == 8, name
        assert batches < 8, f"{name} ran {batches} batches for 8 requests"
    # The Denoiser's engine loop: 8 requests x 2 steps took fewer forwards than 16.
    denoiser = {key: after["Denoiser"][key] - before["Denoiser"][key] for key in ("finished", "steps")}
    assert denoiser["finished"] == 8
    assert denoiser["steps"] < 16, f"the Denoiser ran {denoiser['steps']} forwards for 8 two-step requests"
