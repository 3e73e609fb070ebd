"""LoRA adapters over HTTP: listed by /v1/models, chosen with `model=` or stacked with `lora` (raw
HTTP and the openai SDK), refused with 400s naming the field, and a corrupt adapter failing only the
requests that asked for it, and requests routed to the Denoiser replica holding their adapter."""

import base64

import pytest
from openai import BadRequestError, OpenAI
from ray import serve

from tests.helpers import image_bytes, random_image
from tests.serve.support import Client, app_settings, denoiser_stats, deployed

PHOTO = image_bytes(random_image(80, 64, seed=3))


def edit(client, **fields):
    fields = {"prompt": "make it autumn", "seed": "4", "num_inference_steps": "2", **fields}
    return client.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))], data=fields)


def image_of(response) -> bytes:
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def test_models_lists_every_adapter_under_its_base(client):
    models = {model["id"]: model for model in client.get("/v1/models").json()["data"]}
    assert set(models) == {"edit-plus", "style", "detail", "lightning-4step", "broken"}
    for name in ("style", "detail", "lightning-4step", "broken"):
        assert models[name]["parent"] == "edit-plus" and models[name]["object"] == "model"
        assert models[name]["root"] == name  # the adapter's file path on the server was listed here
    assert models["lightning-4step"]["scheduler"] == "lightning"
    assert models["lightning-4step"]["defaults"] == {"num_inference_steps": 4, "true_cfg_scale": 1.0}
    assert models["detail"]["scale"] == 0.8
    assert models["edit-plus"]["parameters"]["properties"]["lora"]["type"] == "array"


def test_model_names_an_adapter_as_lora_does(client):
    base = image_of(edit(client))
    by_model = image_of(edit(client, model="detail"))
    by_lora = image_of(edit(client, lora='[{"name": "detail", "scale": 0.8}]'))
    assert by_model == by_lora != base
    stacked = image_of(edit(client, model="style", lora='[{"name": "detail"}]'))
    assert stacked == image_of(edit(client, lora='[{"name": "style"}, {"name": "detail"}]'))
    assert stacked not in (base, by_model)


def test_lightning_adapter_runs_its_own_defaults(client):
    before = denoiser_stats()["steps"]
    response = edit(client, model="lightning-4step", num_inference_steps="")  # empty = unset: the adapter's 4 steps
    image_of(response)
    assert denoiser_stats()["steps"] - before >= 4


@pytest.mark.parametrize("fields, param, says", [
    ({"lora": '[{"name": "nope"}]'}, "lora", "unknown adapter 'nope'"),
    ({"lora": '[{"name": "style", "scale": 3}]'}, "lora", "scale must be in [-2.0, 2.0]"),
    ({"lora": '[{"name": "style"}, {"name": "detail"}, {"name": "lightning-4step"}]'}, "lora", "at most 2 adapters"),
    ({"lora": "style"}, "lora", "JSON list"),
    ({"lora": '[{"name": "style", "weight": 1}]'}, "lora", "lora[0].weight"),
    ({"lora": '[{"name": "lightning-4step"}, {"name": "style"}]', "model": "nope"}, "model", "its adapters"),
])
def test_bad_adapter_choices_are_refused_naming_the_field(client, fields, param, says):
    response = edit(client, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_a_corrupt_adapter_fails_its_requests_and_nothing_else(client):
    response = edit(client, model="broken")
    assert response.status_code == 500
    assert "LoRA adapter 'broken' could not be loaded" in response.json()["error"]["message"]
    image_of(edit(client, model="style"))  # the replica is healthy and serves the others
    assert client.get("/healthz").status_code == 200


def test_openai_sdk_selects_and_stacks_adapters(served):
    sdk = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    photo = ("p.png", PHOTO, "image/png")
    extra = {"seed": 4, "num_inference_steps": 2}
    assert {m.id for m in sdk.models.list()} >= {"style", "detail"}
    chosen = sdk.images.edit(image=photo, prompt="make it autumn", model="detail", extra_body=extra)
    stacked = sdk.images.edit(image=photo, prompt="make it autumn", extra_body={**extra, "lora": '[{"name": "detail", "scale": 0.8}]'})
    assert chosen.data[0].b64_json == stacked.data[0].b64_json
    with pytest.raises(BadRequestError) as info:
        sdk.images.edit(image=photo, prompt="x", extra_body={**extra, "lora": '[{"name": "nope"}]'})
    assert info.value.body["param"] == "lora"


def test_requests_go_to_the_denoiser_replica_holding_their_adapter(ray_cluster, tiny_checkpoints):
    """Two Denoiser replicas holding one adapter each (max_loaded 1): Ray Serve's model multiplexing
    sends each request to the replica that holds its adapter, so adapters asked for in turn are loaded
    once each rather than evicting each other (random routing: about one load per two requests)."""
    from serve.app import build_app

    settings = app_settings(tiny_checkpoints["edit-plus"], {"max_loaded": 1, "max_per_request": 1})
    two = settings.denoiser.deployment.model_copy(update={"num_replicas": 2})
    settings = settings.model_copy(update={"denoiser": settings.denoiser.model_copy(update={"deployment": two})})
    with deployed(build_app(settings), "routing", "/routing"):
        client = Client(f"{ray_cluster}/routing")
        for adapter in ("style", "detail") * 6:
            image_of(edit(client, model=adapter))
        denoiser = serve.get_deployment_handle("Denoiser", "routing")
        holders = {name: denoiser.options(multiplexed_model_id=name).stats.remote().result(timeout_s=60) for name in ("style", "detail")}
    assert [holders[name]["adapters"] for name in ("style", "detail")] == [["style"], ["detail"]]
    assert holders["style"]["replica"] != holders["detail"]["replica"]
    assert holders["style"]["adapter_loads"] + holders["detail"]["adapter_loads"] <= 3  # 2, give or take a first race
