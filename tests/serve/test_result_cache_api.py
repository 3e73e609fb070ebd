"""The result cache: online, a repeated request is a hit with identical bytes, answered faster; any
change is a miss; guards still judge a cached image (serve/result_cache.py). A bulk job in the same
cluster shares it (cluster/bulk/result_cache.py)."""

import base64
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray import serve

from serve.app import build_app
from tests.serve.support import Client, app_settings, deployed
from tests.serve.test_http_api import PHOTO

FIELDS = {"prompt": "make the sky pink", "num_inference_steps": "4"}


def test_a_repeated_request_is_a_hit_with_the_same_bytes_and_faster_online_and_in_bulk(served, tiny_checkpoints, tmp_path):
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

        # A bulk job in the same cluster shares the cache: a row made online is answered from it (no stage
        # runs it), a new one is made and kept, and an online request for it is then a hit.
        (tmp_path / "photo.png").write_bytes(PHOTO)
        rows = [{"id": "made-online", "image": "photo.png", "instruction": FIELDS["prompt"], "seed": 3},
                {"id": "new", "image": "photo.png", "instruction": FIELDS["prompt"], "seed": 5}]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
        command = [sys.executable, "-m", "cluster.bulk", "--manifest", str(tmp_path / "manifest.parquet"), "--output",
                   str(tmp_path / "out"), "--model", tiny_checkpoints["edit-plus"], "--num-inference-steps", "4",
                   "--result-cache", "cached"]
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        done = subprocess.run(command, capture_output=True, text=True, timeout=480, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        results = pq.read_table(tmp_path / "out" / "results").to_pandas().set_index("id")
        assert results.loc["made-online", "result_cache"] == "hit" and results.loc["new", "result_cache"] == "miss"
        assert pd.isna(results.loc["made-online", "denoise_s"])  # no stage ran it
        written = (tmp_path / "out" / results.loc["made-online", "output"]).read_bytes()
        assert written == base64.b64decode(first["data"][0]["b64_json"])
        online, _ = edit(seed="5")
        assert online["data"][0]["result_cache"] == "hit"
        assert base64.b64decode(online["data"][0]["b64_json"]) == (tmp_path / "out" / results.loc["new", "output"]).read_bytes()


def test_a_cache_that_does_not_answer_is_a_miss_after_its_timeout_then_skipped(served, tiny_checkpoints):
    """Cache calls had no timeout: with the ResultCache replica down, edits waited until their deadline
    and answered 504 though the image was made. Here the cache has no replica and won't start one
    (scaled to zero, a 10-minute upscale delay): a lookup gives up after `call_timeout_s`, and later
    requests skip the cache for a while instead of paying the timeout again."""
    down = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "upscale_delay_s": 600}
    settings = app_settings(tiny_checkpoints["edit-plus"], result_cache={
        "enabled": True, "call_timeout_s": 1.5, "deployment": {"autoscaling_config": down},
    })
    with deployed(build_app(settings), "cache-down", "/cache-down"):
        client = Client(f"{served}/cache-down")
        answers = []
        for seed in ("1", "2"):
            response = client.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))], data={**FIELDS, "seed": seed})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        assert [answer["data"][0]["result_cache"] for answer in answers] == ["miss", "miss"]
        assert 1.4 < answers[0]["timings"]["result_cache_lookup"] < 5  # the timeout, then the edit was made
        assert answers[1]["timings"]["result_cache_lookup"] < 0.5  # skipped: no second wait
