"""Autoscaling is real: a burst scales the Denoiser 1 -> 2 replicas and back; stages at zero replicas
start one for the first request instead of failing it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from deployments.stages.encoder import Encoder
from serve.app import build_app
from serve.settings import AppSettings, DenoiserStage
from serve.stages import DenoiserDeployment
from tests.helpers import edit_request, image_bytes, random_image, wait_until
from tests.serve.support import Client, app_settings, deployed

PHOTO = image_bytes(random_image(64, 64, seed=4))


def running_replicas(app: str, deployment: str) -> int:
    return serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0)


def test_burst_scales_denoiser_up_and_back_down(ray_cluster, tiny_checkpoints):
    model = tiny_checkpoints["edit-plus"]
    stage = DenoiserStage.model_validate(
        {
            "max_batch_rows": 1,  # one request per forward: load shows up as ongoing requests
            "deployment": {
                "ray_actor_options": {"num_cpus": 0.25},
                "max_ongoing_requests": 2,
                "autoscaling_config": {
                    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                    "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2,
                },
            },
        }
    )
    denoiser = DenoiserDeployment.options(**stage.deployment.options()).bind(model, stage)
    with deployed(denoiser, "scale", None) as handle:
        assert running_replicas("scale", "Denoiser") == 1
        conditioning = Encoder(model).encode(edit_request(model, [PHOTO], prompt="burst", num_inference_steps=10))

        # Concurrent load until the second replica is up; bounded in time and requests.
        scaled, deadline, sent = threading.Event(), time.monotonic() + 120, []

        def client(worker: int) -> None:
            while not scaled.is_set() and time.monotonic() < deadline and len(sent) < 400:
                sent.append(handle.denoise.remote(conditioning, worker).result(timeout_s=120))

        with ThreadPoolExecutor(6) as pool:
            clients = [pool.submit(client, worker) for worker in range(6)]
            try:
                wait_until(lambda: running_replicas("scale", "Denoiser") == 2, "no second Denoiser replica", 120, 0.5)
            finally:
                scaled.set()
            for c in clients:
                c.result()
        wait_until(lambda: running_replicas("scale", "Denoiser") == 1, "no scale-down to 1 replica", 60, 0.5)


def test_stages_scale_from_zero(ray_cluster, tiny_checkpoints):
    settings = app_settings(tiny_checkpoints["edit-plus"]).model_dump(exclude_unset=True)
    for name in ("encoder", "denoiser", "decoder"):
        settings[name]["deployment"]["autoscaling_config"] = {
            "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0,
        }
    with deployed(build_app(AppSettings.model_validate(settings)), "zero", "/zero"):
        assert all(running_replicas("zero", name) == 0 for name in ("Encoder", "Denoiser", "Decoder"))

        client = Client(f"{ray_cluster}/zero")
        assert client.get("/healthz").status_code == 200  # scaled to zero but able to start replicas
        files = [("image", ("p.png", PHOTO, "image/png"))]
        response = client.post("/v1/images/edits", files=files, data={"prompt": "wake up", "num_inference_steps": "2"})
        assert response.status_code == 200, response.text
        assert all(running_replicas("zero", name) == 1 for name in ("Encoder", "Denoiser", "Decoder"))
