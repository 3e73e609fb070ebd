"""Quality reports and guards over HTTP: every image's report, and each guard action firing or not."""

import json

from openai import OpenAI

from tests.helpers import image_bytes, random_image
from tests.serve.test_http_api import edit

SEEDS = (11, 12)


def guarded(client, seed: int, **guard):
    return edit(client, seed=str(seed), guard=json.dumps(guard))


def test_guards_flag_pass_retry_with_the_next_seed_and_fail(client):
    plain = {seed: edit(client, seed=str(seed)).json()["data"][0] for seed in SEEDS}
    report = plain[11]["quality_report"]
    assert set(report) == {"changed_fraction", "unchanged_ssim", "unchanged_psnr_db", "input_size", "output_size", "aspect_ratio_change"}
    assert "guard" not in plain[11]  # none unless asked for (or configured)
    changed = {seed: plain[seed]["quality_report"]["changed_fraction"] for seed in SEEDS}
    assert changed[11] != changed[12]

    flagged = guarded(client, 11, max_changed_fraction=changed[11] / 2).json()["data"][0]
    crossed = f"changed_fraction {changed[11]:g} is above max_changed_fraction {changed[11] / 2:g}"
    assert flagged["guard"] == {"verdict": "flagged", "crossed": [crossed], "retried_from_seed": None}
    assert flagged["b64_json"] == plain[11]["b64_json"]  # a guard never changes the image
    for action in ("flag", "retry", "fail"):  # a guard that does not fire: the image, passed
        passed = guarded(client, 11, max_changed_fraction=1, action=action).json()["data"][0]
        assert passed["guard"]["verdict"] == "passed" and passed["seed"] == 11 and passed["b64_json"] == plain[11]["b64_json"]

    # A limit seed 11's image crosses and seed 12's does not: the retry (seed 11 + n) passes.
    between = (changed[11] + changed[12]) / 2
    limit = {"max_changed_fraction": between} if changed[11] > changed[12] else {"min_changed_fraction": between}
    retried = guarded(client, 11, **limit, action="retry").json()["data"][0]
    assert retried["guard"] == {"verdict": "retried", "crossed": [], "retried_from_seed": 11}
    assert retried["seed"] == 12 and retried["b64_json"] == plain[12]["b64_json"]
    twice = guarded(client, 11, max_changed_fraction=0, action="retry").json()["data"][0]  # the retry crosses it too
    assert twice["guard"]["verdict"] == "flagged" and twice["guard"]["retried_from_seed"] == 11 and twice["seed"] == 12

    failed = guarded(client, 11, max_changed_fraction=0, action="fail")
    assert failed.status_code == 422
    error = failed.json()["error"]
    assert error["param"] == "guard" and error["message"].startswith("guard: the edited image crossed its limits (changed_fraction")


def test_a_streamed_edit_is_guarded_too(served, client):
    sdk = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    photo = ("photo.png", image_bytes(random_image(64, 64, seed=4)), "image/png")
    extra = {"seed": 5, "num_inference_steps": 2, "guard": json.dumps({"max_changed_fraction": 0, "action": "retry"})}
    events = list(sdk.images.edit(image=photo, prompt="make it night", stream=True, extra_body=extra))
    completed = events[-1]
    assert completed.type == "image_edit.completed"
    assert completed.model_extra["guard"] == {"verdict": "flagged", "crossed": completed.model_extra["guard"]["crossed"], "retried_from_seed": 5}
    next_seed = sdk.images.edit(image=photo, prompt="make it night", extra_body={**extra, "seed": 6, "guard": "off"})
    assert completed.b64_json == next_seed.data[0].b64_json
    assert completed.model_extra["quality_report"]["input_size"] == "64x64"
