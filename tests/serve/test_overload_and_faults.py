"""Overload, deadlines, disconnects and dead replicas: bounded queues answer 503 with Retry-After
quickly, deadlines answer 504 and free their work, a vanished client's work is cancelled, a killed
replica's request is made again on its replacement (503 if that misses the deadline); a wedged
engine loop fails its health check; /healthz answers 503, never 500, when Serve cannot say how the
stages are. (Whole nodes lost: tests/cluster/test_multi_node.py.)"""

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import psutil
import pytest
import requests

from deployments.stages.encoder import Encoder
from serve.app import build_app
from serve.capacity import StageCapacity
from serve.ingress import Ingress
from serve.settings import DenoiserStage
from serve.stages import DenoiserDeployment
from tests.helpers import command_line, edit_request, image_bytes, random_image, wait_until
from tests.serve.support import APP, Client, app_settings, denoiser_stats, deployed

PHOTO = image_bytes(random_image(64, 64, seed=5))
FILES = [("image", ("p.png", PHOTO, "image/png"))]
LONG = {"prompt": "take your time", "num_inference_steps": "150", "size": "256x256"}  # several seconds here


@contextlib.contextmanager
def extra_app(ray_cluster, tiny_checkpoints, name: str, **overrides):
    """A second copy of the app under its own name and route, so its faults touch no other test."""
    settings = app_settings(tiny_checkpoints["edit-plus"]).model_copy(update=overrides)
    with deployed(build_app(settings), name, f"/{name}"):
        yield Client(f"{ray_cluster}/{name}")


def test_saturation_answers_503_quickly_and_admitted_requests_finish(ray_cluster, tiny_checkpoints):
    denoiser = DenoiserStage.model_validate({
        "max_batch_rows": 2, "max_waiting": 1,  # one request running, one waiting: the rest are turned away
        "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 8, "max_queued_requests": 2},
    })
    with extra_app(ray_cluster, tiny_checkpoints, "tight", denoiser=denoiser) as client:
        def one(i):
            response = client.post("/v1/images/edits", files=FILES, data={**LONG, "num_inference_steps": "40", "seed": str(i)})
            return response, time.monotonic()

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(one, range(10)))
    codes = [r.status_code for r, _ in results]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 5, codes
    # Refused without waiting for room: every refusal was answered while the admitted edits still ran
    # (a condition, not a time: a loaded 2-core machine stretches every duration).
    first_admitted_done = min(done for response, done in results if response.status_code == 200)
    for response, done in results:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "2" and response.json()["error"]["type"] == "overloaded"
            assert done < first_admitted_done, "a refusal waited until an admitted edit had finished"


def test_deadline_answers_504_and_frees_the_work(client):
    before = denoiser_stats(APP)
    response = client.post("/v1/images/edits", files=FILES, data={**LONG, "timeout": "1"})
    assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"

    def idle() -> bool:  # cancelled in the loop, or never sent to it if the deadline came during encoding
        stats = denoiser_stats(APP)
        return stats["active_requests"] == 0 and stats["waiting_requests"] == 0

    wait_until(idle, "the timed-out request kept running", 20)
    assert denoiser_stats(APP)["finished"] == before["finished"]  # its steps were not run to the end


def test_a_client_that_goes_away_cancels_its_work(client):
    before = denoiser_stats(APP)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{client.base_url}/v1/images/edits", files=FILES, data=LONG, timeout=(5, 1.5))

    def left_the_batch() -> bool:
        stats = denoiser_stats(APP)
        return stats["cancelled"] > before["cancelled"] and stats["active_requests"] == 0

    wait_until(left_the_batch, "the abandoned request kept running", 20)


def replica_processes(app: str, deployment: str) -> list[psutil.Process]:
    title = f"ServeReplica:{app}:{deployment}"
    return [process for process in psutil.process_iter() if title in command_line(process)]


@pytest.fixture(scope="module")
def faulty(ray_cluster, tiny_checkpoints):
    """An app of its own whose Denoiser the tests kill."""
    with extra_app(ray_cluster, tiny_checkpoints, "faulty") as client:
        yield client


def killed_mid_request(client: Client, data: dict) -> tuple[requests.Response, psutil.Process]:
    """The response to an edit whose Denoiser replica was SIGKILLed while it denoised, and the victim."""
    (victim,) = replica_processes("faulty", "Denoiser")
    result = {}
    thread = threading.Thread(target=lambda: result.update(response=client.post("/v1/images/edits", files=FILES, data=data)))
    thread.start()
    wait_until(lambda: denoiser_stats("faulty")["active_requests"] == 1, "the request never reached the Denoiser", 30)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=120)
    return result["response"], victim


def test_a_killed_replica_s_request_is_made_again_on_its_replacement(faulty):
    """The ingress calls the Denoiser again (Serve routes it to the replacement it starts): the client
    gets its image, the same as without the kill, and a header naming the stage made again."""
    data = {**LONG, "seed": "11"}
    expected = faulty.post("/v1/images/edits", files=FILES, data=data)
    assert expected.status_code == 200 and "X-Stage-Retries" not in expected.headers
    response, victim = killed_mid_request(faulty, data)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["X-Stage-Retries"] == "denoise"
    assert response.json()["data"][0]["b64_json"] == expected.json()["data"][0]["b64_json"]
    assert [p.pid for p in replica_processes("faulty", "Denoiser")] != [victim.pid]


def test_a_stream_whose_denoiser_is_killed_starts_denoising_again_and_goes_on(faulty):
    data = {**LONG, "seed": "12", "stream": "true", "stream_progress": "true"}
    (victim,) = replica_processes("faulty", "Denoiser")
    steps, completed = [], []
    with requests.post(f"{faulty.base_url}/v1/images/edits", files=FILES, data=data, stream=True, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] == "image_edit.progress":
                steps.append(event["step"])
                if len(steps) == 3:
                    os.kill(victim.pid, signal.SIGKILL)
            else:
                completed.append(event)
    assert [event["type"] for event in completed] == ["image_edit.completed"], completed
    restart = steps.index(1, 1)  # the denoising started again from its first step
    assert steps[restart:] == list(range(1, 151)) and steps[:3] == [1, 2, 3]
    expected = faulty.post("/v1/images/edits", files=FILES, data={**LONG, "seed": "12"})
    assert completed[0]["b64_json"] == expected.json()["data"][0]["b64_json"]


def test_a_request_whose_retry_misses_its_deadline_gets_503(faulty):
    """Lost its replica, and no other finished it before its `timeout`: no capacity (503, Retry-After),
    not a slow edit (504)."""
    response, _ = killed_mid_request(faulty, {**LONG, "num_inference_steps": "200", "timeout": "6"})
    assert response.status_code == 503, response.text[:500]
    assert response.headers["Retry-After"] and response.json()["error"]["type"] == "overloaded"
    assert "lost" in response.json()["error"]["message"] and response.headers["X-Stage-Retries"] == "denoise"

    def edits_again() -> bool:
        return faulty.post("/v1/images/edits", files=FILES, data={"prompt": "again", "num_inference_steps": "2"}).status_code == 200

    wait_until(edits_again, "the killed Denoiser was not replaced", 120)


def test_a_wedged_denoising_step_fails_the_health_check(ray_cluster, tiny_checkpoints):
    settings = DenoiserStage.model_validate({"wedged_after_s": 0.5})
    replica = DenoiserDeployment.func_or_class(tiny_checkpoints["edit-plus"], settings)
    try:
        replica.check_health()  # idle: healthy
        release = threading.Event()

        def hang(jobs):  # the model hangs
            release.wait(30)
            return {}

        replica.loop.denoiser.step = hang
        conditioning = Encoder(tiny_checkpoints["edit-plus"]).encode(edit_request(tiny_checkpoints["edit-plus"], [PHOTO], prompt="hang", seed=0))
        replica.loop.submit(conditioning)
        wait_until(lambda: replica.loop.step_running_for() > settings.wedged_after_s, "the step never started", 30)
        with pytest.raises(RuntimeError, match="denoising step has been running"):
            replica.check_health()
        release.set()
    finally:
        replica.loop.close()


def test_a_stream_whose_client_goes_away_cancels_its_work(client):
    before = denoiser_stats(APP)
    data = {**LONG, "stream": "true", "stream_progress": "true"}
    with requests.post(f"{client.base_url}/v1/images/edits", files=FILES, data=data, stream=True, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith(b"event:")) == b"event: image_edit.progress"
    # The connection is closed mid-stream.
    wait_until(lambda: denoiser_stats(APP)["cancelled"] > before["cancelled"], "the abandoned stream kept running", 20)
    assert denoiser_stats(APP)["finished"] == before["finished"]


def test_healthz_answers_503_never_500_when_serve_cannot_say(ray_cluster):
    """While an app is being (re)deployed Serve's status may lack it or a stage, or the controller may
    not answer: the health route says 503 (retry), not an internal error."""
    # what the route reads of its replica: an app Serve's status doesn't have
    ingress = SimpleNamespace(served_model="edit-plus", capacity=StageCapacity("being-redeployed"), _watch_capacity=lambda: None)
    response = asyncio.run(Ingress.func_or_class.healthz(ingress, None))
    assert response.status_code == 503 and json.loads(response.body)["error"]["type"] == "overloaded"
