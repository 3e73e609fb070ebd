"""Chained edits over HTTP: a chain equals separate calls fed each other's output, is checked whole
before any work, and a failure names its link."""

import base64
import json

import numpy as np

from deployments.media import metadata
from tests.serve.test_http_api import edit, pixels


def _upload(b64: str) -> list:
    return [("image", ("previous.png", base64.b64decode(b64), "image/png"))]


def test_a_three_link_chain_equals_three_calls_fed_each_other_s_output(client):
    chain = json.dumps(["add snow", {"prompt": "make it night", "seed": 4, "num_inference_steps": 3}])
    response = edit(client, seed="9", n="2", chain=chain, chain_intermediates="true", output_format="jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    for i, entry in enumerate(body["data"]):  # image i: every link's seed + i
        first = edit(client, seed=str(9 + i)).json()["data"][0]
        second = edit(client, files=_upload(first["b64_json"]), prompt="add snow", seed=str(9 + i)).json()["data"][0]
        third = edit(client, files=_upload(second["b64_json"]), prompt="make it night", seed=str(4 + i),
                     num_inference_steps="3", output_format="jpeg").json()["data"][0]
        intermediates = [item["b64_json"] for item in entry["intermediates"]]
        assert np.array_equal(pixels(intermediates[0]), pixels(first["b64_json"]))  # PNG: exactly the same pixels
        assert np.array_equal(pixels(intermediates[1]), pixels(second["b64_json"]))
        assert np.array_equal(pixels(entry["b64_json"]), pixels(third["b64_json"]))  # the same JPEG encoding of them
        assert entry["seed"] == 4 + i and [item["seed"] for item in entry["intermediates"]] == [9 + i, 9 + i]
        record = metadata.read(base64.b64decode(entry["b64_json"]))  # back to link 1
        assert [record["parameters"]["prompt"], record["derived_from"]["parameters"]["prompt"]] == ["make it night", "add snow"]
        assert record["derived_from"]["derived_from"]["parameters"]["prompt"] == "make the sky pink"
    assert "intermediates" not in edit(client, seed="9", chain=json.dumps(["add snow"])).json()["data"][0]
    timings = body["timings"]
    assert timings["denoise"] > 0 and timings["total"] >= timings["denoise"]


def test_a_chain_is_checked_whole_before_any_work_and_a_failing_link_is_named(client):
    refusals = [
        ({"chain": json.dumps(["ok", {"prompt": "x", "num_inference_steps": 0}])}, "chain", "chain[1].num_inference_steps: must be an integer"),
        ({"chain": json.dumps([{"prompt": "x", "mask": "m"}])}, "chain", "chain[0]: mask belong to the whole request"),
        ({"chain": json.dumps([{"seed": 3}])}, "chain", "chain[0]: give an instruction, or an object with a prompt"),
        ({"chain": "[not json"}, "chain", "chain: must be a JSON list such as [\"make it night\""),
        ({"chain": json.dumps(["a", "b", "c", "d"])}, "chain", "a request may have at most 4 links in all, got 5"),
        ({"chain": json.dumps(["a"]), "stream": "true"}, "chain", "a chained edit can't be streamed"),
        ({"chain_intermediates": "true"}, "chain_intermediates", "needs a chain"),
    ]
    for fields, param, message in refusals:
        error = edit(client, **fields).json()["error"]
        assert error["param"] == param and message in error["message"], (fields, error)

    # the tiny model changes its own output little: the last link does "nothing", which its guard refuses
    guarded = json.dumps(["add snow", {"prompt": "make it night", "guard": {"min_changed_fraction": 0.5, "action": "fail"}}])
    failed = edit(client, chain=guarded)
    assert failed.status_code == 422
    error = failed.json()["error"]
    assert error["param"] == "chain[1]"
    assert error["message"].startswith("chain[1] (link 3 of 3): guard: the edited image crossed its limits")
