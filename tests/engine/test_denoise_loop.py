"""The continuous-batching engine loop: joining mid-way, cancellation, fairness across shapes."""

import threading
import time

import pytest
import torch

from deployments.admission import AdmissionPolicy
from deployments.contracts import EditRequest
from deployments.denoise_loop import DenoiseLoop
from deployments.errors import OverloadedError
from tests.helpers import image_bytes, random_image

WIDE = image_bytes(random_image(96, 64, seed=1))
TALL = image_bytes(random_image(64, 96, seed=2))
POLICY = AdmissionPolicy(token_budget=10**6, max_batch_rows=16, max_wait_steps=4)


@pytest.fixture(scope="module")
def encode(stages):
    encoder = stages["edit-plus"].encoder
    return lambda **kwargs: encoder.encode(EditRequest(**{"images": (WIDE,), **kwargs}))


@pytest.fixture
def loop(stages):
    loop = DenoiseLoop(stages["edit-plus"].denoiser, POLICY, max_waiting=64)
    yield loop
    loop.close()


def solo(stages, conditioning) -> torch.Tensor:
    return stages["edit-plus"].denoiser.denoise([conditioning])[0].latents


def test_a_request_joins_a_running_batch_and_both_match_solo(stages, encode, loop):
    long = encode(prompt="a long edit with many steps", negative_prompt=" ", seed=1, num_inference_steps=12)
    short = encode(prompt="short", seed=2, num_inference_steps=3)
    joined = threading.Event()

    def submit_short_midway(done: int, total: int, preview) -> None:
        if done == 4 and not joined.is_set():
            joined.set()
            tickets.append(loop.submit(short))

    tickets = [loop.submit(long, on_step=submit_short_midway)]
    long_latents = tickets[0].future.result(timeout=120).latents
    short_latents = tickets[1].future.result(timeout=120).latents

    assert loop.stats.mixed_timestep_steps >= 1  # one forward held both, at different timesteps
    assert loop.stats.max_requests_in_a_step == 2
    assert torch.allclose(long_latents, solo(stages, long), atol=1e-5, rtol=0)
    assert torch.allclose(short_latents, solo(stages, short), atol=1e-5, rtol=0)


def test_a_cancelled_request_leaves_without_disturbing_others(stages, encode, loop):
    keep = encode(prompt="keep me", seed=3, num_inference_steps=8)
    drop = encode(prompt="drop me", negative_prompt="blurry", seed=4, num_inference_steps=8)
    doomed = loop.submit(drop, on_step=lambda done, total, _: doomed.cancel() if done == 2 else None)
    kept = loop.submit(keep)
    assert torch.allclose(kept.future.result(timeout=120).latents, solo(stages, keep), atol=1e-5, rtol=0)
    assert doomed.future.cancelled() and doomed.progress[0] < 8
    assert loop.stats.cancelled == 1


def test_a_rare_shape_is_served_while_a_common_shape_keeps_arriving(stages, encode, loop):
    common = encode(prompt="common", seed=5, num_inference_steps=6)
    rare = stages["edit-plus"].encoder.encode(EditRequest(images=(TALL,), prompt="rare", seed=6, num_inference_steps=2))
    stop = threading.Event()
    submitted = []

    def keep_common_arriving() -> None:
        while not stop.is_set():
            if loop.stats.waiting_requests < 3:
                submitted.append(loop.submit(common))
            time.sleep(0.005)

    feeder = threading.Thread(target=keep_common_arriving)
    feeder.start()
    try:
        time.sleep(0.5)  # a common-shape batch is running and its queue is never empty
        rare_ticket = loop.submit(rare)
        rare_ticket.future.result(timeout=120)
    finally:
        stop.set()
        feeder.join()
    # Waiting is bounded by the aging threshold plus draining one common request's steps.
    assert rare_ticket.waited_steps <= POLICY.max_wait_steps + 6
    assert len(submitted) > 3  # the common shape kept arriving meanwhile


def test_waiting_queue_is_bounded(stages, encode):
    loop = DenoiseLoop(stages["edit-plus"].denoiser, AdmissionPolicy(10**6, 16, 4, continuous=False), max_waiting=1)
    try:
        conditioning = encode(prompt="x", seed=7, num_inference_steps=20)
        first = loop.submit(conditioning)
        time.sleep(0.2)  # first is running; the next one waits
        loop.submit(conditioning)
        with pytest.raises(OverloadedError):
            loop.submit(conditioning)
        first.future.result(timeout=120)
    finally:
        loop.close()


def test_previews_arrive_after_the_asked_steps_and_change_nothing(stages, encode, loop):
    conditioning = encode(prompt="show me", negative_prompt="blurry", seed=9, num_inference_steps=6)
    previews = {}
    ticket = loop.submit(conditioning, on_step=lambda done, total, p: previews.update({done: p}) if p else None,
                         preview_after=frozenset({2, 6}))
    final = ticket.future.result(timeout=120).latents
    assert set(previews) == {2, 6}
    assert torch.allclose(final, solo(stages, conditioning), atol=1e-5, rtol=0)
    # After the last step nothing is left to remove: the predicted clean sample is the result.
    assert torch.allclose(previews[6].latents, final, atol=1e-5, rtol=0)
    assert previews[2].latents.shape == final.shape and not torch.allclose(previews[2].latents, final)
