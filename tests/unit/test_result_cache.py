"""The result cache's key and its bound (deployments/workflows/result_cache.py)."""

import dataclasses
import shutil

import pytest

from deployments.checkpoints.identity import STAGES, engine_identity
from deployments.checkpoints.loader import resolve_model
from deployments.contracts import EditedImage, EditRequest
from deployments.request.binding import parse
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraSettings
from deployments.workflows.result_cache import ResultCache, as_cached, result_key
from tests.helpers import image_bytes, random_image

IMAGE = image_bytes(random_image(32, 32, seed=1))


def image(size: int, name: str = "") -> EditedImage:
    return EditedImage(request_id=name, data=b"x" * size, format="png", width=1, height=1, seed=0)


def test_the_byte_bound_counts_the_records_kept_with_each_image():
    """Only the encoded bytes were counted: records and reports kept with them were free."""
    cache = ResultCache(max_bytes=1000)
    record = {"prompt": "x" * 600}
    cache.put("a", dataclasses.replace(image(100), provenance=record))
    assert cache.bytes > 700
    cache.put("b", dataclasses.replace(image(100), provenance=record))  # a goes: both don't fit
    assert cache.stats()["entries"] == 1 and cache.get("a") is None


def test_a_hit_reports_no_forwards_it_did_not_run():
    made = dataclasses.replace(image(10), cache={"computed": 8, "reused": 2, "predicted": 0})
    assert as_cached(made).cache is None


def test_least_recently_used_images_go_first_within_the_byte_bound():
    cache = ResultCache(max_bytes=100)
    cache.put("a", image(40))
    cache.put("b", image(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", image(40))  # 120 bytes: b goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", image(101))  # never fits: not kept, nothing evicted for it
    assert cache.get("huge") is None
    assert cache.stats() == {"entries": 2, "bytes": 80, "hits": 3, "misses": 2, "evictions": 1}


CPU = {stage: ("cpu", FastPath()) for stage in STAGES}


@pytest.fixture(scope="module")
def key(tiny_checkpoints):
    spec = resolve_model(tiny_checkpoints["edit-plus"])
    model = spec.request_model()
    engine = engine_identity(spec, LoraSettings(), CPU)

    def key_of(seed: int = 1, request_id: str = "r", derived_from: dict | None = None, **values) -> str:
        parameters = parse(model, {"image": [IMAGE], "prompt": "make it pink", "seed": 0, **values})
        return result_key(EditRequest(parameters, request_id=request_id, derived_from=derived_from), seed, "tiny", {}, engine)

    return key_of


def test_the_key_is_the_engine_too(tiny_checkpoints, tmp_path):
    """A bulk job with --fp8 (or on a CPU, in fp32) stored images that online requests then got as exact hits."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoints["edit"], checkpoint)
    (tmp_path / "style.safetensors").write_bytes(b"weights one")
    adapters = {"style": {"source": str(tmp_path / "style.safetensors")}}
    parameters = parse(resolve_model(str(checkpoint)).request_model(lora=LoraSettings(adapters=adapters)),
                       {"image": [IMAGE], "prompt": "p", "lora": '[{"name": "style"}]'})

    def key(stages=CPU, **lora) -> str:
        lora_settings = LoraSettings(adapters={"style": {**adapters["style"], **lora}})
        engine = engine_identity(resolve_model(str(checkpoint)), lora_settings, stages)
        return result_key(EditRequest(parameters), 0, "m", lora_settings.sources(), engine)

    same = key()
    assert key() == same
    assert key(scale=2.0) == same  # the request's resolved scale is in its record; the configured default isn't a pixel
    variants = {
        "fp8": {**CPU, "denoise": ("cpu", FastPath(fp8=True))},
        "device and dtype": {**CPU, "denoise": ("cuda", FastPath())},
        "attention backend": {**CPU, "denoise": ("cpu", FastPath(attention_backend="_native_math"))},
        "VAE tiling": {**CPU, "decode": ("cpu", FastPath(vae_tiling=True))},
    }
    for name, stages in variants.items():
        assert key(stages) != same, name
    for neutral in ({**CPU, "decode": ("cpu", FastPath(vae_slicing=True))}, {**CPU, "encode": ("cpu", FastPath(pinned_transfers=False))}):
        assert key(neutral) == same  # settings that change no pixel don't split the cache
    assert key(weight_name="other.safetensors") != same
    assert key(scheduler="lightning") != same
    (tmp_path / "style.safetensors").write_bytes(b"weights two")  # another file under the same name
    other_file = key()
    assert other_file != same
    with open(checkpoint / "transformer" / "config.json", "a") as config:  # another revision of the checkpoint
        config.write(" ")
    assert key() != other_file


def test_the_key_is_every_input_of_the_image_and_nothing_else(key):
    same = key()
    assert key(request_id="other") == same  # the request's own id, its guard and n don't make the image
    assert key(guard='{"max_changed_fraction": 0.5}') == same and key(n=2) == same
    for other in (key(seed=2), key(prompt="make it blue"), key(num_inference_steps=3), key(output_format="jpeg"),
                  key(image=[image_bytes(random_image(32, 32, seed=2))]), key(true_cfg_scale=2.0, negative_prompt=" "),
                  key(derived_from={"model": "a chain's earlier link"})):
        assert other != same
