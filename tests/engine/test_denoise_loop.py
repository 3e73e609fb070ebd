"""The continuous-batching engine loop: joining mid-way, cancellation, shapes sharing a step, and a
loop that no single request (or fault) can stop from serving the others."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.batching.admission import AdmissionPolicy
from deployments.batching.denoise_loop import DenoiseLoop
from deployments.errors import EditError, EngineStoppedError, OverloadedError
from deployments.settings.step_cache import TaylorSeer
from tests.helpers import edit_request, image_bytes, random_image, wait_until

WIDE = image_bytes(random_image(96, 64, seed=1))
TALL = image_bytes(random_image(64, 96, seed=2))
POLICY = AdmissionPolicy(token_budget=10**6, max_batch_rows=16, max_wait_steps=4)
RESULT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def encode(stages):
    encoder = stages["edit-plus"].encoder
    return lambda image=WIDE, **kwargs: encoder.encode(edit_request(stages["edit-plus"].model, [image], **kwargs))


@pytest.fixture
def denoiser(stages):
    return stages["edit-plus"].denoiser


@pytest.fixture
def loop(denoiser):
    loop = DenoiseLoop(denoiser, POLICY, max_waiting=64)
    yield loop
    loop.close()


def solo(denoiser, conditioning) -> torch.Tensor:
    return denoiser.denoise([conditioning])[0].latents


def result(ticket) -> torch.Tensor:
    return ticket.future.result(timeout=RESULT_TIMEOUT_S).latents


def test_a_request_joins_a_running_batch_and_both_match_solo(denoiser, encode, loop):
    long = encode(prompt="a long edit with many steps", negative_prompt=" ", seed=1, num_inference_steps=12)
    short = encode(prompt="short", seed=2, num_inference_steps=3)
    tickets = []
    joined = threading.Event()

    def submit_short_midway(done: int, total: int, preview) -> None:
        if done == 4 and not joined.is_set():
            joined.set()
            tickets.append(loop.submit(short))

    tickets.insert(0, loop.submit(long, on_step=submit_short_midway))
    long_latents = result(tickets[0])
    short_latents = result(tickets[1])

    assert loop.stats.mixed_timestep_steps >= 1  # one forward held both, at different timesteps
    assert loop.stats.max_requests_in_a_step == 2
    assert torch.allclose(long_latents, solo(denoiser, long), atol=1e-5, rtol=0)
    assert torch.allclose(short_latents, solo(denoiser, short), atol=1e-5, rtol=0)


def test_two_shapes_progress_in_the_same_step_and_match_solo(denoiser, encode, loop):
    wide = encode(prompt="wide", negative_prompt="blurry", seed=3, num_inference_steps=5)
    tall = encode(TALL, prompt="tall", seed=4, num_inference_steps=5)
    assert wide.img_shapes != tall.img_shapes
    tickets = [loop.submit(wide), loop.submit(tall)]
    wide_latents, tall_latents = result(tickets[0]), result(tickets[1])
    assert loop.stats.max_buckets_in_a_step == 2 and loop.stats.buckets_stepped == 2 * loop.stats.steps
    assert loop.stats.steps == 5  # both ran all their steps side by side
    assert torch.allclose(wide_latents, solo(denoiser, wide), atol=1e-5, rtol=0)
    assert torch.allclose(tall_latents, solo(denoiser, tall), atol=1e-5, rtol=0)


def test_a_cancelled_request_leaves_without_disturbing_others(denoiser, encode, loop):
    keep = encode(prompt="keep me", seed=3, num_inference_steps=8)
    drop = encode(prompt="drop me", negative_prompt="blurry", seed=4, num_inference_steps=8)
    doomed = []  # filled before any step can call back: submit only enqueues

    def cancel_after_two(done: int, total: int, preview) -> None:
        if done == 2:
            doomed[0].cancel()

    doomed.append(loop.submit(drop, on_step=cancel_after_two))
    kept = loop.submit(keep)
    assert torch.allclose(result(kept), solo(denoiser, keep), atol=1e-5, rtol=0)
    assert doomed[0].future.cancelled() and doomed[0].progress[0] < 8
    assert loop.stats.cancelled == 1


def test_a_cancel_racing_the_final_result_leaves_the_loop_serving(denoiser, encode, loop, monkeypatch):
    racing = encode(prompt="cancelled while finishing", seed=5, num_inference_steps=2)
    real_finish = denoiser.finish
    tickets = []

    def finish_then_cancel(job):
        latents = real_finish(job)
        if job.conditioning is racing:
            tickets[0].cancel()  # the client leaves between the last step and the result
        return latents

    monkeypatch.setattr(denoiser, "finish", finish_then_cancel)
    tickets.append(loop.submit(racing))
    wait_until(lambda: tickets[0].future.done(), "the racing request was never resolved")
    assert tickets[0].future.cancelled()
    after = encode(prompt="next", seed=6, num_inference_steps=2)
    assert torch.allclose(result(loop.submit(after)), solo(denoiser, after), atol=1e-5, rtol=0)
    assert loop.alive


def test_an_on_step_that_raises_fails_only_its_request(denoiser, encode, loop):
    bad = encode(prompt="bad listener", seed=7, num_inference_steps=3)
    good = encode(prompt="good", seed=8, num_inference_steps=3)

    def explode(done: int, total: int, preview) -> None:
        raise RuntimeError("listener bug")

    failing, fine = loop.submit(bad, on_step=explode), loop.submit(good)
    with pytest.raises(EditError, match="RuntimeError"):
        failing.future.result(timeout=RESULT_TIMEOUT_S)
    assert torch.allclose(result(fine), solo(denoiser, good), atol=1e-5, rtol=0)
    assert loop.stats.failed == 1 and loop.alive


# Requests whose own settings can't run (made past the edge's validation, which refuses them): each
# fails in its own part of a batched step.
BROKEN = {
    # a TaylorSeer predicting at step 0, from no computed output: once a TypeError failing the whole step
    "step cache": lambda c: dataclasses.replace(c, cache=TaylorSeer.model_construct(
        method="taylorseer", cache_interval=2, disable_cache_before_step=0, disable_cache_after_step=None, max_order=1)),
    "guidance": lambda c: dataclasses.replace(c, parameters={**c.parameters, "true_cfg_scale": "four"}),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_request_whose_own_part_fails_fails_alone_and_never_counts_against_health(denoiser, encode, broken):
    loop = DenoiseLoop(denoiser, POLICY, max_waiting=64, unhealthy_after_failed_steps=2)
    try:
        good = [encode(prompt="fine", seed=seed, num_inference_steps=3) for seed in (11, 12)]
        bad = BROKEN[broken](encode(prompt="broken", seed=13, num_inference_steps=3))
        tickets = [loop.submit(good[0]), loop.submit(bad), loop.submit(good[1])]
        with pytest.raises(EditError, match="internal error while denoising"):
            tickets[1].future.result(timeout=RESULT_TIMEOUT_S)
        for ticket, conditioning in zip(tickets[::2], good):
            assert torch.allclose(result(ticket), solo(denoiser, conditioning), atol=1e-5, rtol=0)
        assert loop.stats.max_requests_in_a_step == 3  # they shared the step it failed in
        for _ in range(3):  # alone on a quiet replica, again and again: no step of the engine failed
            with pytest.raises(EditError):
                loop.submit(bad).future.result(timeout=RESULT_TIMEOUT_S)
        assert loop.stats.failed_steps == 0 and loop.health(wedged_after_s=60) is None
    finally:
        loop.close()


def test_a_step_that_fails_once_fails_its_requests_and_the_next_succeeds(denoiser, encode, loop, monkeypatch):
    real_predict = denoiser.family.predict
    failures = []

    def predict_failing_once(jobs):
        if not failures:
            failures.append(len(jobs))
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return real_predict(jobs)

    monkeypatch.setattr(denoiser.family, "predict", predict_failing_once)
    first = loop.submit(encode(prompt="unlucky", seed=9, num_inference_steps=2))
    with pytest.raises(EditError, match="RuntimeError"):
        first.future.result(timeout=RESULT_TIMEOUT_S)
    second = encode(prompt="lucky", seed=10, num_inference_steps=2)
    assert torch.allclose(result(loop.submit(second)), solo(denoiser, second), atol=1e-5, rtol=0)
    assert loop.stats.failed_steps == 1 and loop.stats.consecutive_failed_steps == 0
    assert loop.health(wedged_after_s=60) is None


def test_steps_that_keep_failing_make_the_loop_unhealthy(denoiser, encode, monkeypatch):
    loop = DenoiseLoop(denoiser, POLICY, max_waiting=64, unhealthy_after_failed_steps=3)
    try:
        def broken(jobs):
            raise RuntimeError("CUDA error: device-side assert (simulated)")

        monkeypatch.setattr(denoiser.family, "predict", broken)
        for seed in range(3):
            assert loop.health(wedged_after_s=60) is None
            ticket = loop.submit(encode(prompt="doomed", seed=seed, num_inference_steps=2))
            with pytest.raises(EditError):
                ticket.future.result(timeout=RESULT_TIMEOUT_S)
        assert loop.health(wedged_after_s=60) == "the last 3 denoising steps all failed"
    finally:
        loop.close()


def test_a_fault_of_the_loop_itself_fails_everyone_with_a_retryable_error(denoiser, encode, monkeypatch):
    class BrokenPolicy:
        def admit(self, waiting, active):
            raise RuntimeError("policy bug")

    loop = DenoiseLoop(denoiser, BrokenPolicy(), max_waiting=64)
    try:
        ticket = loop.submit(encode(prompt="caught in a fault", seed=11, num_inference_steps=2))
        with pytest.raises(EngineStoppedError):
            ticket.future.result(timeout=RESULT_TIMEOUT_S)
        assert loop.alive  # it goes on serving: the next request meets the same fault, not a hang
        monkeypatch.setattr(loop, "policy", POLICY)
        after = encode(prompt="after the fault", seed=12, num_inference_steps=2)
        assert torch.allclose(result(loop.submit(after)), solo(denoiser, after), atol=1e-5, rtol=0)
    finally:
        loop.close()


def test_close_fails_waiting_and_running_requests_and_refuses_new_ones(denoiser, encode):
    loop = DenoiseLoop(denoiser, AdmissionPolicy(10**6, 16, 4, continuous=False), max_waiting=8)
    long = encode(prompt="running", seed=13, num_inference_steps=200)
    tickets = [loop.submit(long)]
    wait_until(lambda: loop.stats.active_requests == 1, "the first request never started")
    tickets.append(loop.submit(long))  # waits: whole-request batching
    loop.close()
    for ticket in tickets:
        with pytest.raises(EngineStoppedError) as info:
            ticket.future.result(timeout=5)
        assert info.value.status == 503
    with pytest.raises(EngineStoppedError):
        loop.submit(long)
    assert not loop.alive


def test_submit_only_enqueues(denoiser, encode, monkeypatch):
    """Starting a request (noise, schedule, device copies) happens on the loop's thread, never the caller's."""
    threads = []
    real_start = denoiser.start
    monkeypatch.setattr(denoiser, "start", lambda c: threads.append(threading.current_thread().name) or real_start(c))
    loop = DenoiseLoop(denoiser, POLICY, max_waiting=8)
    try:
        result(loop.submit(encode(prompt="where do I start", seed=14, num_inference_steps=2)))
    finally:
        loop.close()
    assert threads == ["denoise-loop"]


def test_a_rare_shape_is_served_while_a_common_shape_keeps_arriving(denoiser, encode, loop):
    common = encode(prompt="common", seed=5, num_inference_steps=6)
    rare = encode(TALL, prompt="rare", seed=6, num_inference_steps=2)
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
        wait_until(lambda: loop.stats.steps >= 2 and loop.stats.waiting_requests > 0, "the common shape never queued")
        rare_ticket = loop.submit(rare)
        rare_ticket.future.result(timeout=RESULT_TIMEOUT_S)
    finally:
        stop.set()
        feeder.join()
    # Waiting is bounded by the aging threshold plus draining one common request's steps.
    assert rare_ticket.waited_steps <= POLICY.max_wait_steps + 6
    assert len(submitted) > 3  # the common shape kept arriving meanwhile


def test_waiting_queue_is_bounded(denoiser, encode):
    loop = DenoiseLoop(denoiser, AdmissionPolicy(10**6, 16, 4, continuous=False), max_waiting=1)
    try:
        conditioning = encode(prompt="x", seed=7, num_inference_steps=20)
        first = loop.submit(conditioning)
        wait_until(lambda: loop.stats.active_requests == 1, "the first request never started")
        loop.submit(conditioning)  # the next one waits
        with pytest.raises(OverloadedError):
            loop.submit(conditioning)
        first.future.result(timeout=RESULT_TIMEOUT_S)
    finally:
        loop.close()


def test_previews_arrive_after_the_asked_steps_and_change_nothing(denoiser, encode, loop):
    conditioning = encode(prompt="show me", negative_prompt="blurry", seed=9, num_inference_steps=6)
    previews = {}
    ticket = loop.submit(conditioning, on_step=lambda done, total, p: previews.update({done: p}) if p else None, previews=2)
    final = result(ticket)
    assert set(previews) == {2, 4}  # spread over the 6 steps, before the last
    assert torch.allclose(final, solo(denoiser, conditioning), atol=1e-5, rtol=0)
    assert previews[2].latents.shape == final.shape and not torch.allclose(previews[2].latents, final)


def test_a_masked_edit_gets_every_preview_over_the_steps_its_strength_runs(stages):
    """Previews were spread over the nominal steps: a masked edit at strength 0.5 ran half of them and got fewer."""
    s = stages["edit"]
    rgba = np.full((64, 96, 4), 255, np.uint8)
    rgba[:, :48, 3] = 0  # the left half is edited (OpenAI's mask: alpha 0)
    mask = image_bytes(Image.fromarray(rgba, "RGBA"))
    masked = s.encoder.encode(edit_request(s.model, [WIDE], prompt="p", seed=3, num_inference_steps=8, mask=mask, strength=0.5))
    loop = DenoiseLoop(s.denoiser, POLICY, max_waiting=4)
    try:
        previews = []
        ticket = loop.submit(masked, on_step=lambda done, total, p: previews.append((done, total)) if p else None, previews=3)
        result(ticket)
        assert previews == [(1, 4), (2, 4), (3, 4)]  # 4 steps run; 3 previews before the last
    finally:
        loop.close()
