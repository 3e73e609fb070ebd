"""The result cache online: a repeated request is a hit with identical bytes, answered faster; any
change is a miss; guards still judge a cached image (serve/result_cache.py)."""

import json
import time

from ray import serve

from serve.app import build_app
from tests.serve.support import Client, app_settings, deployed
from tests.serve.test_http_api import PHOTO

FIELDS = {"prompt": "make the sky pink", "num_inference_steps": "4"}


def test_a_repeated_request_is_a_hit_with_the_same_bytes_and_faster(served, tiny_checkpoints):
    settings = app_settings(tiny_checkpoints["edit-plus"], result_cache={"enabled": True, "max_bytes": 2**24})
    with deployed(build_app(settings), "cached", "/cached"):
        client = Client(f"{served}/cached")

        def edit(**fields):
            started = time.perf_counter()
            response = client.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))], data={**FIELDS, **fields})
            assert response.status_code == 200, response.text
            return response.json(), time.perf_counter() - started

        first, miss_s = edit(seed="3")
        again, hit_s = edit(seed="3")
        assert first["data"][0]["result_cache"] == "miss" and again["data"][0]["result_cache"] == "hit"
        assert again["data"][0]["b64_json"] == first["data"][0]["b64_json"]
        assert set(again["timings"]) == {"result_cache_lookup", "total"}  # no stage ran
        assert {"encode", "denoise", "decode", "result_cache_lookup"} <= set(first["timings"])
        other, warm_miss_s = edit(seed="4")  # another seed, another image
        assert other["data"][0]["result_cache"] == "miss"
        print(f"\nmiss {miss_s * 1000:.0f} ms (first request), {warm_miss_s * 1000:.0f} ms (warm); hit {hit_s * 1000:.0f} ms")
        assert hit_s < warm_miss_s / 2
        assert edit(seed="3", num_inference_steps="3")[0]["data"][0]["result_cache"] == "miss"
        both = edit(seed="3", n="2")[0]["data"]  # image 0 is seed 3's, image 1 seed 4's: both made before
        assert [item["result_cache"] for item in both] == ["hit", "hit"] and both[0]["b64_json"] == first["data"][0]["b64_json"]
        guarded = edit(seed="3", guard=json.dumps({"max_changed_fraction": 0}))[0]["data"][0]  # a guard doesn't make the image
        assert guarded["result_cache"] == "hit" and guarded["guard"]["verdict"] == "flagged"

        stats = serve.get_deployment_handle("ResultCache", "cached").stats.remote().result(timeout_s=60)
        assert (stats["hits"], stats["misses"], stats["entries"]) == (4, 3, 3)
