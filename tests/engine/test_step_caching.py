"""Step caching decided per request row: a request alone matches diffusers' pipeline with the same
cache on its transformer (First-Block-Cache, TaylorSeer), decision for decision; cached and uncached
requests, with different methods and thresholds, batched and joining at different steps, each get
their solo result."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

from deployments.batching.staggered import denoise_joining
from deployments.families.qwen_image_edit import step_cache
from deployments.media.images import decode_image
from deployments.settings.engine import EngineSettings
from deployments.stages.in_process import InProcessStages
from tests.helpers import edit_request, image_bytes, random_image

UPLOAD = image_bytes(random_image(96, 64, seed=3))
STEPS = 10


def diffusers_decisions(pipeline) -> tuple[list[bool], callable]:
    """Whether each transformer call of `pipeline` ran its second block (hooks; call the second value to remove them)."""
    decisions: list[bool] = []
    hooks = [
        pipeline.transformer.register_forward_pre_hook(lambda module, args: decisions.append(False)),
        pipeline.transformer.transformer_blocks[1].img_mlp.register_forward_hook(lambda *_: decisions.__setitem__(-1, True)),
    ]
    return decisions, lambda: [hook.remove() for hook in hooks]


CASES = [  # request `cache`, the diffusers config, negative prompt (None: CFG off)
    ({"method": "first_block_cache", "threshold": 0.3}, FirstBlockCacheConfig(threshold=0.3), " "),
    ({"method": "first_block_cache", "threshold": 0.4}, FirstBlockCacheConfig(threshold=0.4), None),
    ({"method": "first_block_cache", "threshold": 0.5}, FirstBlockCacheConfig(threshold=0.5), " "),
    ({"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2, "max_order": 1},
     TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, max_order=1, taylor_factors_dtype=torch.float32, use_lite_mode=True), " "),
    ({"method": "taylorseer", "cache_interval": 3, "disable_cache_before_step": 3, "disable_cache_after_step": 8, "max_order": 2},
     TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=3, disable_cache_after_step=8, max_order=2,
                           taylor_factors_dtype=torch.float32, use_lite_mode=True), None),
]


@pytest.mark.parametrize("cache, config, negative", CASES, ids=lambda value: str(value)[:40] if isinstance(value, dict) else None)
def test_a_cached_request_alone_matches_diffusers_with_the_same_cache(stages, reference, monkeypatch, cache, config, negative):
    s = stages["edit"]
    request = edit_request(s.model, [UPLOAD], prompt="make it night", negative_prompt=negative, seed=2,
                           num_inference_steps=STEPS, cache=json.dumps(cache))
    ours: list[bool] = []
    decide = step_cache._decide
    monkeypatch.setattr(step_cache, "_decide", lambda caches, residuals: ours.extend(result := decide(caches, residuals)) or result)
    forwards: list[int] = []
    counter = s.denoiser.family.loaded["transformer"].transformer_blocks[1].img_mlp.register_forward_hook(
        lambda module, args, output: forwards.append(args[0].shape[0])
    )
    try:
        job = s.denoiser.start(s.encoder.encode(request))
        while not job.done:
            assert not s.denoiser.step([job])
        pixels = s.decoder.decode_pixels(s.denoiser.finish(job))
    finally:
        counter.remove()

    expected_decisions, remove = diffusers_decisions(reference.pipeline("edit"))
    try:
        expected = reference("edit", monkeypatch, [decode_image(UPLOAD)], cache=config, prompt="make it night",
                             negative_prompt=negative, num_inference_steps=STEPS, seed=2)
    finally:
        remove()
    assert np.abs(pixels - expected).max() <= 1e-4
    rows_per_step = 2 if negative is not None else 1
    computed = sum(forwards)  # rows through the second block, over all steps
    assert computed == sum(expected_decisions)  # the same work skipped
    if cache["method"] == "first_block_cache":
        assert ours == expected_decisions  # step by step, guidance row by guidance row
    report = s.denoiser.finish(job).cache
    assert report["computed"] == computed and report["computed"] + report["reused"] + report["predicted"] == STEPS * rows_per_step
    states = job.state["caches"].values()
    done = sum(state.computed for state in states)
    assert done == computed and sum(state.reused if cache["method"] == "first_block_cache" else state.predicted for state in states) == STEPS * rows_per_step - done
    print(f"\n{cache}: {computed} of {STEPS * rows_per_step} row-forwards computed")


def test_cached_and_uncached_requests_batched_match_solo(stages):
    s = stages["edit-plus"]
    requests = [
        dict(prompt="make the sky pink", negative_prompt=" ", seed=1, num_inference_steps=8),
        dict(prompt="remove the car", negative_prompt=None, seed=2, num_inference_steps=8,
             cache='{"method": "first_block_cache", "threshold": 0.3}'),
        dict(prompt="add a hat", negative_prompt=" ", seed=3, num_inference_steps=9,
             cache='{"method": "first_block_cache", "threshold": 0.5}'),
        dict(prompt="make it a painting", negative_prompt=" ", seed=4, num_inference_steps=7,
             cache='{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}'),
        dict(prompt="winter", negative_prompt=None, seed=5, num_inference_steps=6,
             cache='{"method": "first_block_cache", "threshold": 0.05}'),
    ]
    conditionings = [s.encoder.encode(edit_request(s.model, [UPLOAD], **request)) for request in requests]
    solo = [s.denoiser.denoise([c])[0].latents for c in conditionings]
    batched, forwards = denoise_joining(s.denoiser, conditionings, [0, 1, 0, 2, 3])
    for i, (together, alone) in enumerate(zip(batched, solo)):
        assert torch.allclose(together, alone, atol=1e-5, rtol=0), f"request {i}"


def test_a_rows_cache_holds_copies_of_its_own_rows_not_views_of_the_batch(stages):
    """A view of one row kept the whole batch's tensor alive (≈10 GB pinned instead of ≈0.7 GB at the
    multi-GPU config), invisible to the token budget."""
    s = stages["edit-plus"]
    caches = ['{"method": "first_block_cache", "threshold": 0.3}',
              '{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}']
    jobs = [s.denoiser.start(s.encoder.encode(edit_request(s.model, [UPLOAD], prompt="p", seed=seed, num_inference_steps=4, cache=cache)))
            for seed, cache in enumerate(caches * 2)]
    for _ in range(2):
        assert not s.denoiser.step(jobs)
    kept = [tensor for job in jobs for cache in job.state["caches"].values()
            for tensor in (getattr(cache, "head_residual", None), *getattr(cache, "factors", {}).values()) if tensor is not None]
    assert len(kept) == 2 * 2 + 2 * 2 * 2  # FBC: each row's head residual; TaylorSeer: each row's two factors
    for tensor in kept:
        assert tensor.shape[0] == 1 and tensor.untyped_storage().nbytes() == tensor.nbytes, "a view of a batch tensor"


def test_a_cached_request_records_its_forwards_and_skipped_share(stages, monkeypatch):
    from deployments import metrics
    from tests.unit.test_metrics import Recorder

    recorder = Recorder()
    metrics.bind(recorder)
    try:
        s = stages["edit"]
        request = edit_request(s.model, [UPLOAD], prompt="x", negative_prompt=None, seed=1, num_inference_steps=6,
                               cache='{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}')
        s.denoiser.denoise([s.encoder.encode(request)])
    finally:
        metrics.bind(None)
    forwards = {tags["outcome"]: value for name, value, tags in recorder.records if name == "image_edit_cache_forwards"}
    assert forwards == {"computed": 4, "predicted": 2}  # steps 0, 1, 3, 5 computed; reused 0 adds nothing
    assert [value for name, value, _ in recorder.records if name == "image_edit_cache_skipped_share"] == [2 / 6]


@pytest.fixture(scope="module")
def edit_2511(tiny_checkpoints, tmp_path_factory):
    """A tiny Qwen-Image-Edit-2511: the tiny Edit-Plus checkpoint with `zero_cond_t` set (its transformer
    modulates the condition image's tokens with t = 0, so its time embedding has 2 x batch rows)."""
    path = tmp_path_factory.mktemp("tiny-2511") / "edit-2511"
    shutil.copytree(tiny_checkpoints["edit-plus"], path)
    config = path / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "zero_cond_t": True}))
    return InProcessStages(str(path))


def test_first_block_cache_on_a_2511_model_matches_diffusers_and_batches(edit_2511, monkeypatch):
    s = edit_2511
    assert s.denoiser.family.loaded["transformer"].zero_cond_t
    cache = {"method": "first_block_cache", "threshold": 0.4}
    requests = [dict(prompt="make it night", seed=2, cache=json.dumps(cache)), dict(prompt="add snow", seed=3)]
    conditionings = [s.encoder.encode(edit_request(s.model, [UPLOAD], num_inference_steps=STEPS, **r)) for r in requests]
    solo = [s.denoiser.denoise([c])[0] for c in conditionings]
    assert solo[0].cache["reused"] > 0

    settings = EngineSettings.for_model(s.model)
    areas = {1024 * 1024: settings.vae_image_area, 384 * 384: settings.condition_image_area}
    original = pipeline_qwenimage_edit_plus.calculate_dimensions
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "calculate_dimensions", lambda area, ratio: original(areas[area], ratio))
    pipeline = QwenImageEditPlusPipeline.from_pretrained(s.model)
    pipeline.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.4))
    expected = pipeline(image=[decode_image(UPLOAD)], prompt="make it night", negative_prompt=" ", num_inference_steps=STEPS,
                        generator=torch.Generator("cpu").manual_seed(2), output_type="np").images[0]
    assert np.abs(s.decoder.decode_pixels(solo[0]) - expected).max() <= 1e-4

    batched, _ = denoise_joining(s.denoiser, conditionings, [0, 2])
    for i, (together, alone) in enumerate(zip(batched, solo)):
        assert torch.allclose(together, alone.latents, atol=1e-5, rtol=0), f"request {i}"


def test_a_masked_and_cached_request_matches_diffusers_inpaint_with_the_same_cache(stages, reference, monkeypatch):
    """Two per-request features composed: First-Block-Cache in the forward, the mask's blend after each step."""
    from tests.engine.test_masked_edits import MASK_BYTES, area, diffusers_mask

    s = stages["edit"]
    cache = {"method": "first_block_cache", "threshold": 0.4}
    request = edit_request(s.model, [UPLOAD], prompt="remove it", seed=4, num_inference_steps=STEPS, mask=MASK_BYTES,
                           strength=0.8, cache=json.dumps(cache))
    latents = s.denoiser.denoise([s.encoder.encode(request)])[0]
    assert latents.cache["reused"] > 0
    expected = reference("inpaint", monkeypatch, [decode_image(UPLOAD)], cache=FirstBlockCacheConfig(threshold=0.4),
                         mask_image=diffusers_mask(area("rectangle")), prompt="remove it", negative_prompt=" ",
                         strength=0.8, num_inference_steps=STEPS, seed=4)
    assert np.abs(s.decoder.decode_pixels(latents) - expected).max() <= 1e-4
