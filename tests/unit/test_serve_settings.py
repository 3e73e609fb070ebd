"""serve/config.yaml is a valid Ray Serve config whose args validate; bad values fail naming the field."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.checkpoints.loader import model_name
from serve.__main__ import CONFIG, load_config
from serve.settings import AppSettings


def settings_of(path: Path) -> AppSettings:
    return AppSettings.model_validate(load_config(path, port=None).applications[0].args)


def test_repo_config_is_valid_and_port_overridable():
    schema = load_config(CONFIG, port=8123)
    settings = AppSettings.model_validate(schema.applications[0].args)
    assert schema.http_options.port == 8123 and schema.http_options.host == "127.0.0.1"
    assert schema.applications[0].import_path == "serve.app:build_app"
    assert settings.denoiser.continuous and settings.denoiser.token_budget >= 1
    assert settings.encoder.deployment.autoscaling_config["max_replicas"] >= 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        # Ray Serve's own schema (and its AutoscalingConfig's checks), not a copy
        ({"denoiser": {"deployment": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}}}, "max_replicas (2) must be greater than or equal to min_replicas (3)"),
        ({"denoiser": {"deployment": {"max_ongoing_request": 3}}}, "denoiser.deployment.max_ongoing_request"),
        ({"encoder": {"deployment": {"ray_actor_options": {"num_gpus": -0.5}}}}, "encoder.deployment.ray_actor_options.num_gpus"),
        ({"decoder": {"max_batch_size": 0}}, "decoder.max_batch_size"),
        ({"denoiser": {"max_bach_size": 4}}, "denoiser.max_bach_size"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"limits": {"max_n": 100}}, "limits.max_n"),
    ],
)
def test_bad_settings_name_the_field(args, fragment):
    with pytest.raises(ValidationError) as info:
        AppSettings.model_validate(args)
    assert fragment in str(info.value)


def test_ray_serve_deployment_options_reach_the_stage():
    placement = {
        "num_gpus": 0.25, "resources": {"small-gpu-pool": 1}, "accelerator_type": "L4",
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}, "memory": 2**30,
    }
    deployment = {
        "ray_actor_options": placement, "max_replicas_per_node": 2, "graceful_shutdown_timeout_s": 5,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "upscaling_factor": 2.0},
    }
    options = AppSettings.model_validate({"encoder": {"deployment": deployment}}).encoder.deployment.options()
    assert options["ray_actor_options"] == placement and options["max_replicas_per_node"] == 2
    assert options["autoscaling_config"]["upscaling_factor"] == 2.0 and "name" not in options


def test_model_name(tmp_path: Path):
    assert model_name("Qwen/Qwen-Image-Edit-2509") == "Qwen/Qwen-Image-Edit-2509"
    assert model_name(str(tmp_path / "tiny-edit-plus")) == "tiny-edit-plus"


def _gpus(stage) -> float:
    """GPUs a stage may take at its largest: per replica x most replicas."""
    options = stage.deployment.options()  # what the config set (Ray's defaults: no GPU, one replica)
    replicas = options.get("autoscaling_config", {}).get("max_replicas", options.get("num_replicas", 1))
    return options.get("ray_actor_options", {}).get("num_gpus", 0) * replicas


def test_one_gpu_layout_fits_one_card():
    settings = settings_of(CONFIG.with_name("config.one-gpu.yaml"))
    stages = (settings.encoder, settings.denoiser, settings.decoder)
    assert all(stage.deployment.ray_actor_options.num_gpus > 0 for stage in stages)
    assert sum(_gpus(stage) for stage in stages) <= 1.0


def test_multi_gpu_layout_gives_the_denoiser_whole_cards_and_the_rest_one_card():
    settings = settings_of(CONFIG.with_name("config.multi-gpu.yaml"))
    assert settings.denoiser.deployment.ray_actor_options.num_gpus == 1
    assert settings.denoiser.deployment.autoscaling_config["max_replicas"] > 1
    assert _gpus(settings.encoder) + _gpus(settings.decoder) <= 1.0


def test_the_ray_serve_internals_python_m_serve_relies_on_are_there():
    """`python -m serve` deploys a config file the way `serve run` does, through two of Ray Serve's
    private calls (ray/serve/scripts.py); fail here, by name, if a Ray upgrade changes them."""
    import inspect

    from ray.serve._private import api
    from ray.serve._private.client import ServeControllerClient

    assert {"http_options", "proxy_location", "grpc_options", "controller_options"} <= set(
        inspect.signature(api.serve_start).parameters
    )
    assert "config" in inspect.signature(ServeControllerClient.deploy_apps).parameters


@pytest.mark.parametrize("variant", ["edit-plus", "ip2p"])
def test_the_default_config_serves_every_tiny_model(variant, tiny_checkpoints, monkeypatch):
    """`MODEL=models/tiny-ip2p make serve` works with serve/config.yaml: the config lists no adapters of
    its own; a checkpoint that ships adapters (adapters/adapters.json) offers them, one that doesn't, none."""
    from serve.app import build_app

    monkeypatch.setenv("MODEL", tiny_checkpoints[variant])
    ingress = build_app(settings_of(CONFIG))
    encoder, denoiser, decoder, settings, served, result_cache = ingress._bound_deployment.init_args
    assert result_cache is not None  # on in serve/config.yaml
    expected = {"style", "detail", "lightning-4step"} if variant == "edit-plus" else set()
    assert set(served.lora.adapters) == expected


GPU_POOLS = ["--encoder-gpus", "0.25", "--denoiser-gpus", "0.5", "--decoder-gpus", "0.25"]
PINNED = ["--encoder-accelerator-type", "L4", "--denoiser-accelerator-type", "H100", "--decoder-accelerator-type", "L4"]


@pytest.mark.parametrize("config, flags", [
    ("config.yaml", ["--encoder-gpus", "0", "--denoiser-gpus", "0", "--decoder-gpus", "0"]),
    ("config.one-gpu.yaml", GPU_POOLS), ("config.multi-gpu.yaml", GPU_POOLS), ("config.hetero-gpu.yaml", GPU_POOLS + PINNED),
])
def test_a_bulk_job_on_the_same_hardware_shares_each_shipped_configs_result_cache_keys(tiny_checkpoints, config, flags):
    """The result cache keys images by the engine too (deployments/checkpoints/identity.py): a bulk job on
    the hardware a shipped config runs on must make the same identity — only what changes pixels counts
    (the configs slice their Decoder's VAE; a bulk job has one fast path for every stage)."""
    from cluster.bulk.__main__ import parse_args, stage_engines
    from deployments.checkpoints.identity import engine_identity
    from deployments.checkpoints.loader import resolve_model
    from deployments.settings.fast_path import FastPath
    from deployments.settings.lora import LoraSettings

    spec = resolve_model(tiny_checkpoints["edit"])
    online = engine_identity(spec, LoraSettings(), settings_of(CONFIG.with_name(config)).stage_engines())
    args = parse_args(["--manifest", "m.parquet", "--output", "out", *flags])
    assert engine_identity(spec, LoraSettings(), stage_engines(args, FastPath())) == online
