"""serve/config.yaml is a valid Ray Serve config whose args validate; bad values fail naming the field."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve.__main__ import CONFIG, load_config
from deployments.models import model_name
from serve.settings import AppSettings


def test_repo_config_is_valid_and_port_overridable():
    schema, settings = load_config(CONFIG, port=8123)
    assert schema.http_options.port == 8123 and schema.http_options.host == "127.0.0.1"
    assert schema.applications[0].import_path == "serve.app:build_app"
    assert settings.denoiser.continuous and settings.denoiser.token_budget >= 1
    assert settings.encoder.deployment.autoscaling_config.max_replicas >= 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({"denoiser": {"deployment": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}}}, "min_replicas <= initial_replicas <= max_replicas"),
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


def test_fractional_gpus_are_allowed():
    settings = AppSettings.model_validate({"encoder": {"deployment": {"ray_actor_options": {"num_gpus": 0.25}}}})
    assert settings.encoder.deployment.options()["ray_actor_options"]["num_gpus"] == 0.25


def test_model_name(tmp_path: Path):
    assert model_name("Qwen/Qwen-Image-Edit-2509") == "Qwen/Qwen-Image-Edit-2509"
    assert model_name(str(tmp_path / "tiny-edit-plus")) == "tiny-edit-plus"
