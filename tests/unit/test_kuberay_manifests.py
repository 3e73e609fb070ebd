"""The Kubernetes manifests stay in step with the app and the bulk job they run."""

import shlex
from pathlib import Path

import pytest
import yaml

from cluster.bulk.__main__ import parse_args
from serve.ingress import Ingress
from serve.settings import AppSettings
from serve.stages import DecoderDeployment, DenoiserDeployment, EncoderDeployment

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
STAGES = ("encoder", "denoiser", "decoder")


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return load("rayservice.yaml")


def serve_app(config: dict) -> dict:
    (app,) = config["applications"]
    return app


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def gpu_workers(cluster_spec: dict) -> list[dict]:
    return [
        c for group in cluster_spec["workerGroupSpecs"] for c in group["template"]["spec"]["containers"]
        if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    ]


def test_rayservice_runs_the_app_of_serve_config(rayservice):
    assert rayservice["kind"] == "RayService"
    ours = serve_app(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    theirs = serve_app(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    for key in ("name", "import_path", "route_prefix"):
        assert theirs[key] == ours[key], key
    AppSettings.model_validate(theirs["args"])  # the same typed settings, valid
    assert set(theirs["args"]) == set(ours["args"])
    # Each settings section configures the deployment of that name.
    deployments = {d.name.lower() for d in (Ingress, EncoderDeployment, DenoiserDeployment, DecoderDeployment)}
    assert deployments == {"ingress", *STAGES} and deployments <= set(theirs["args"])


def test_rayservice_puts_the_stages_on_gpus_and_autoscales(rayservice):
    args = serve_app(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))["args"]
    settings = AppSettings.model_validate(args)
    for stage in STAGES:
        deployment = getattr(settings, stage).deployment
        assert 0 < deployment.ray_actor_options.num_gpus <= 1, stage
        assert deployment.autoscaling_config["max_replicas"] > deployment.autoscaling_config["min_replicas"], stage
    assert sum(getattr(settings, s).deployment.ray_actor_options.num_gpus for s in STAGES) <= 1  # one card each
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert gpu_workers(cluster)
    for container in containers(cluster):
        assert container["readinessProbe"] and container["livenessProbe"], container["name"]
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"], container["name"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"


def test_the_hetero_rayservice_runs_config_hetero_gpu_verbatim():
    service = load("rayservice-hetero.yaml")
    assert service["kind"] == "RayService"
    ours = yaml.safe_load((ROOT / "serve" / "config.hetero-gpu.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == ours
    AppSettings.model_validate(serve_app(ours)["args"])


def test_the_hetero_worker_groups_are_the_stages_pools():
    """Each stage asks for a GPU type that exactly one worker group's pods have, with GPUs enough; every
    pool keeps two pods at least, so losing one leaves the stage running."""
    cluster = load("rayservice-hetero.yaml")["spec"]["rayClusterConfig"]
    hetero = yaml.safe_load((ROOT / "serve" / "config.hetero-gpu.yaml").read_text())
    settings = AppSettings.model_validate(serve_app(hetero)["args"])
    groups = cluster["workerGroupSpecs"]
    for stage in STAGES:
        options = getattr(settings, stage).deployment
        accelerator = options.ray_actor_options.accelerator_type
        pool = [g for g in groups if accelerator in g["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"].split("-")]
        assert len(pool) == 1, (stage, accelerator)
        (container,) = pool[0]["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= options.ray_actor_options.num_gpus, stage
        assert pool[0]["minReplicas"] >= 2 and options.autoscaling_config["min_replicas"] >= 2, stage
    for container in containers(cluster):
        assert container["readinessProbe"] and container["livenessProbe"], container["name"]


def test_rayjob_runs_the_bulk_command_on_gpus():
    job = load("rayjob-bulk.yaml")
    assert job["kind"] == "RayJob"
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "cluster.bulk"]
    args = parse_args(command[3:])  # the real CLI accepts every flag
    assert args.manifest.startswith("s3://") and args.output.startswith("s3://")  # nodes share no disk
    for stage in STAGES:
        assert getattr(args, f"{stage}_gpus") > 0, stage
    cluster = job["spec"]["rayClusterSpec"]
    assert gpu_workers(cluster)
    for container in containers(cluster):
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"], container["name"]


def test_podmonitor_scrapes_the_metrics_port_of_the_labelled_pods(rayservice):
    monitor = load("podmonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for spec in (rayservice["spec"]["rayClusterConfig"], load("rayjob-bulk.yaml")["spec"]["rayClusterSpec"]):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert selector.items() <= group["template"]["metadata"]["labels"].items()
