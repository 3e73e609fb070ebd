"""LoRA adapters in the staged engine: each file format diffusers reads gives what diffusers' pipeline
gives with `load_lora_weights` + `set_adapters` (<= 1e-4 on the float image), stacked adapters and the
Lightning scheduler included; requests with different adapters share forwards and still get their
solo results; loading and unloading adapters leaves the base model bit-identical."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from torch._dynamo.utils import counters

from deployments.batching.staggered import denoise_joining
from deployments.errors import EditError
from deployments.families.qwen_image_edit.parameters import LIGHTNING_SCHEDULER
from deployments.lora.store import AdapterStore
from deployments.media.images import decode_image
from deployments.settings.engine import EngineSettings
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraSettings
from deployments.stages.denoiser import Denoiser
from deployments.stages.in_process import InProcessStages
from tests.helpers import image_bytes, random_image

FILES = {"style": "style-peft.safetensors", "detail": "detail-kohya.safetensors", "lightning": "lightning-like.safetensors"}
UPLOAD = image_bytes(random_image(96, 64, seed=5))
OTHER_UPLOAD = image_bytes(random_image(64, 96, seed=6))
STEPS = 3


def lora_settings(checkpoint: str, **extra) -> LoraSettings:
    adapters = {name: {"source": f"{checkpoint}/adapters/{file}"} for name, file in FILES.items()}
    adapters["detail"]["scale"] = 0.8
    adapters["lightning"].update(scheduler="lightning", defaults={"num_inference_steps": 8, "true_cfg_scale": 1.0})
    return LoraSettings(adapters={**adapters, **extra.pop("adapters", {})}, **extra)


def make_request(stages: InProcessStages, upload=UPLOAD, **values):
    """A request of keyword values to `stages`, with one upload."""
    return stages.request({**values, "image": [upload]})


def encoded(stages: InProcessStages, **values):
    return stages.encoder.encode(make_request(stages, **values))


def pixels_of(stages: InProcessStages, **values) -> np.ndarray:
    return stages.decoder.decode_pixels(stages.denoiser.denoise([encoded(stages, **values)])[0])


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    model = tiny_checkpoints["edit-plus"]
    return InProcessStages(model, lora_settings(model))


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    """diffusers' QwenImageEditPlusPipeline with the three adapters loaded as diffusers loads them."""
    model = tiny_checkpoints["edit-plus"]
    pipe = QwenImageEditPlusPipeline.from_pretrained(model)
    for name, file in FILES.items():
        pipe.load_lora_weights(f"{model}/adapters/{file}", adapter_name=name)
    settings = EngineSettings.for_model(model)
    areas = {1024 * 1024: settings.vae_image_area, 384 * 384: settings.condition_image_area}
    original_scheduler = pipe.scheduler

    def run(monkeypatch, adapters: dict[str, float], lightning=False, **kwargs) -> np.ndarray:
        original = pipeline_qwenimage_edit_plus.calculate_dimensions
        monkeypatch.setattr(pipeline_qwenimage_edit_plus, "calculate_dimensions", lambda a, r: original(areas[a], r))
        pipe.set_adapters(list(adapters), list(adapters.values()))
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING_SCHEDULER) if lightning else original_scheduler
        generator = torch.Generator("cpu").manual_seed(kwargs.pop("seed"))
        return pipe(image=[decode_image(UPLOAD)], generator=generator, output_type="np", **kwargs).images[0]

    return run


CASES = [  # adapters as the request names them, the scales diffusers gets, CFG scale
    ([{"name": "style"}], {"style": 1.0}, 4.0),  # diffusers/PEFT format, alpha 8 / rank 4 from its metadata
    ([{"name": "detail"}], {"detail": 0.8}, 4.0),  # kohya, alpha tensors; the adapter's configured scale
    ([{"name": "lightning", "scale": 0.6}], {"lightning": 0.6}, 1.0),  # diffusion_model. keys, alpha 1 / rank 8; its schedule
    ([{"name": "style", "scale": 0.7}, {"name": "detail", "scale": 1.3}], {"style": 0.7, "detail": 1.3}, 3.0),  # stacked
]


@pytest.mark.parametrize("lora, scales, cfg", CASES, ids=["peft", "kohya", "diffusion_model", "stacked"])
def test_adapters_match_diffusers(engine, reference, monkeypatch, lora, scales, cfg):
    values = dict(prompt="make it look like a watercolor", negative_prompt="blurry", true_cfg_scale=cfg, seed=7,
                  num_inference_steps=STEPS)
    ours = pixels_of(engine, lora=lora, **values)
    expected = reference(monkeypatch, scales, lightning="lightning" in scales, **values)
    assert np.abs(ours - expected).max() <= 1e-4
    # The adapter changed the image visibly: a dropped adapter or an ignored alpha could not pass.
    assert np.abs(pixels_of(engine, **values) - expected).max() > 1e-2


@pytest.mark.parametrize("steps", [4, 8])
def test_lightning_schedule_matches_diffusers(engine, reference, monkeypatch, steps):
    request = make_request(engine, prompt="add a red hat", lora=[{"name": "lightning"}], seed=3, num_inference_steps=steps)
    assert request.parameters.true_cfg_scale == 1.0  # the adapter's default: CFG off
    conditioning = engine.encoder.encode(request)
    assert "negative_prompt_embeds" not in conditioning.tensors
    job = engine.denoiser.start(conditioning)
    if steps == 4:  # the sigmas Lightning was distilled for
        assert torch.allclose(job.scheduler.sigmas[:4], torch.tensor([1.0, 0.9, 0.75, 0.5]), atol=1e-6)
    ours = engine.decoder.decode_pixels(engine.denoiser.denoise([conditioning])[0])
    expected = reference(
        monkeypatch, {"lightning": 1.0}, lightning=True, prompt="add a red hat", true_cfg_scale=1.0, seed=3,
        num_inference_steps=steps,
    )
    assert np.abs(ours - expected).max() <= 1e-4


def test_lightning_defaults_apply_only_where_the_request_is_silent(engine):
    default = make_request(engine, prompt="x", lora=[{"name": "lightning"}])
    assert (default.parameters.num_inference_steps, default.parameters.true_cfg_scale) == (8, 1.0)
    chosen = make_request(engine, prompt="x", lora=[{"name": "lightning"}], num_inference_steps=4, true_cfg_scale=2.0)
    assert (chosen.parameters.num_inference_steps, chosen.parameters.true_cfg_scale) == (4, 2.0)
    # The Lightning schedule runs 1 step (finite sigmas); the base schedule needs 2.
    engine.encoder.encode(make_request(engine, prompt="x", lora=[{"name": "lightning"}], num_inference_steps=1))
    with pytest.raises(EditError, match="at least 2 steps"):
        engine.encoder.encode(make_request(engine, prompt="x", num_inference_steps=1))


MIXED = [  # adapters, CFG, steps, upload, joining after this many steps
    ([{"name": "style"}], 4.0, 5, UPLOAD, 0),
    ([{"name": "detail", "scale": 1.5}], 1.0, 4, UPLOAD, 0),
    ([{"name": "style", "scale": 0.5}, {"name": "detail"}], 3.0, 6, UPLOAD, 2),
    ([], 4.0, 4, UPLOAD, 1),
    ([{"name": "lightning"}], None, 4, UPLOAD, 1),  # its own schedule, in the same forwards
    ([{"name": "style"}], 4.0, 3, OTHER_UPLOAD, 1),  # another shape: another forward in the same step
]


def test_mixed_adapters_in_one_batch_match_their_solo_runs(engine):
    conditionings = []
    for i, (lora, cfg, steps, upload, _) in enumerate(MIXED):
        values = {} if cfg is None else {"true_cfg_scale": cfg, "negative_prompt": "ugly"}
        conditionings.append(engine.encoder.encode(
            make_request(engine, upload, prompt=f"edit number {i}", lora=lora, seed=i, num_inference_steps=steps, **values)
        ))
    solo = [engine.denoiser.denoise([c])[0].latents for c in conditionings]
    batched, forwards = denoise_joining(engine.denoiser, conditionings, [m[4] for m in MIXED])
    for i, (together, alone) in enumerate(zip(batched, solo)):
        assert torch.allclose(together, alone, atol=1e-5, rtol=0), f"request {i}"
    assert max(forwards) >= 6  # requests with different adapters really shared forwards


def test_loading_and_unloading_adapters_leaves_the_base_model_bit_identical(tiny_checkpoints):
    """20 adapters loaded in turn through an LRU of 2: the base output is bit-identical afterwards, and
    the model holds only the installed adapters' weights (what an evicted one held is gone)."""
    model = tiny_checkpoints["edit-plus"]
    files = [FILES[name] for name in ("style", "detail", "lightning")]
    adapters = {f"a{i}": {"source": f"{model}/adapters/{files[i % 3]}"} for i in range(20)}
    stages = InProcessStages(model, LoraSettings(adapters=adapters, max_loaded=2, max_per_request=2))
    base = encoded(stages, prompt="base", seed=1, num_inference_steps=2)
    before = stages.denoiser.denoise([base])[0].latents
    for name in adapters:
        stages.denoiser.denoise([encoded(stages, prompt="x", lora=[{"name": name}], seed=1, num_inference_steps=2)])
        assert len(stages.denoiser.adapters.installed) <= 2
    assert torch.equal(stages.denoiser.denoise([base])[0].latents, before)
    # Only the installed adapters' weights remain: evicted ones left nothing behind.
    held = sum(p.numel() for n, p in stages.denoiser.family.loaded["transformer"].named_parameters() if ".lora_" in n)
    assert held == sum(_lora_weights(adapters[name]["source"]) for name in stages.denoiser.adapters.installed)


def _lora_weights(path: str) -> int:
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        return sum(math.prod(file.get_slice(key).get_shape())
                   for key in file.keys() if key.endswith(".weight"))


def test_a_corrupt_or_missing_adapter_fails_only_its_requests(engine, tiny_checkpoints, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    gone = tmp_path / "gone.safetensors"
    gone.write_bytes(b"")
    model = engine.model
    lora = lora_settings(model, adapters={"corrupt": {"source": str(corrupt)}, "missing": {"source": str(gone)}})
    gone.unlink()  # removed after the deployment started
    stages = InProcessStages(model, lora)
    good = encoded(stages, prompt="fine", lora=[{"name": "style"}], seed=1, num_inference_steps=2)
    results = stages.denoiser.denoise_batch([
        good,
        encoded(stages, prompt="bad", lora=[{"name": "corrupt"}], seed=1, num_inference_steps=2),
        encoded(stages, prompt="gone", lora=[{"name": "missing"}], seed=1, num_inference_steps=2),
    ])
    assert not isinstance(results[0], EditError)
    for result, name in zip(results[1:], ("corrupt", "missing")):
        assert isinstance(result, EditError) and f"LoRA adapter {name!r} could not be loaded" in result.message
    assert stages.denoiser.adapters.installed == ("style",)
    assert torch.equal(stages.denoiser.denoise([good])[0].latents, results[0].latents)  # the model is unharmed


def test_step_cached_requests_with_adapters_batched_match_their_solo_runs(engine):
    """First-Block-Cache runs blocks 2..N for a subset of the rows: each keeps its own adapters there."""
    caches = ['{"method": "first_block_cache", "threshold": 0.5}', None, '{"method": "first_block_cache", "threshold": 0.3}']
    conditionings = [
        engine.encoder.encode(make_request(engine, UPLOAD, prompt=f"edit {i}", lora=lora, seed=i, num_inference_steps=20,
                                             negative_prompt="ugly", **({"cache": cache} if cache else {})))
        for i, (lora, cache) in enumerate(zip(['[{"name": "style"}]', '[{"name": "detail"}]', '[]'], caches))
    ]
    solo = [engine.denoiser.denoise([c])[0] for c in conditionings]
    assert solo[0].cache["reused"] > 0 and solo[2].cache["reused"] > 0  # rows really skipped blocks 2..N
    batched, _ = denoise_joining(engine.denoiser, conditionings, [0, 1, 0])
    for i, (together, alone) in enumerate(zip(batched, solo)):
        assert torch.allclose(together, alone.latents, atol=1e-5, rtol=0), f"request {i}"


def test_a_compiled_denoiser_compiles_nothing_after_its_warm_up_and_gives_the_plain_results(engine, monkeypatch):
    """With `compile`, requests using no adapter, one, stacked ones at any scale, in batches of one or
    several rows, with adapters loaded and evicted in between (an LRU of 2 for 3 adapters), run what the
    warm-up compiled and give the uncompiled Denoiser's results. Before lora.hold_structure and the eager
    adapter terms, the first request with an adapter recompiled the blocks past Dynamo's limit of
    compilations per function, and from then on they ran uncompiled."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)  # an error, not a silent fallback
    torch._dynamo.reset()  # as in a new process: compiled Denoisers of other tests share the block's compiled code
    lora = lora_settings(engine.model, max_loaded=2, max_per_request=2)
    compiled = Denoiser(engine.model, fast_path=FastPath(compile=True), lora=lora)
    before = counters["stats"]["unique_graphs"]
    conditionings = [
        engine.encoder.encode(make_request(engine, upload, prompt=prompt, lora=adapters, seed=i, num_inference_steps=2, **values))
        for i, (upload, prompt, adapters, values) in enumerate([
            (UPLOAD, "watercolor", [{"name": "style"}], {"negative_prompt": "ugly"}),
            (UPLOAD, "sharper", [{"name": "detail", "scale": 1.5}], {"true_cfg_scale": 1.0}),
            (UPLOAD, "both at once", [{"name": "style", "scale": 0.5}, {"name": "detail"}], {"true_cfg_scale": 3.0}),
            (UPLOAD, "no adapter, and a longer prompt than the others", [], {"negative_prompt": "blurry, dark"}),
            (UPLOAD, "fast", [{"name": "lightning"}], {}),  # a third adapter: the LRU evicts one
            (OTHER_UPLOAD, "another shape", [{"name": "style"}], {}),
        ])
    ]
    expected = [engine.denoiser.denoise([c])[0].latents for c in conditionings]
    batched = compiled.denoise_batch(conditionings)
    solo = [compiled.denoise([c])[0] for c in conditionings]
    for i, (together, alone, plain) in enumerate(zip(batched, solo, expected)):
        assert torch.allclose(together.latents, plain, atol=1e-5, rtol=0), f"request {i} in the batch"
        assert torch.allclose(alone.latents, plain, atol=1e-5, rtol=0), f"request {i} alone"
    assert compiled.adapters.loads > 3  # evictions happened: an adapter was loaded again
    assert counters["stats"]["unique_graphs"] == before


def test_a_missing_adapter_file_is_refused_when_configured_not_taken_for_a_hub_id(tmp_path):
    """A local path that doesn't exist silently became a Hugging Face hub id."""
    for source in (str(tmp_path / "nope.safetensors"), "./adapters/nope", "../x/y/z", "style.safetensors"):
        with pytest.raises(ValueError, match="is a path, and there is no such file or directory"):
            LoraSettings(adapters={"x": {"source": source}})
    assert LoraSettings(adapters={"x": {"source": "lightx2v/Qwen-Image-Lightning"}}).adapters["x"].location() == "lightx2v/Qwen-Image-Lightning"


def test_adapter_reads_nobody_waits_for_are_bounded_by_max_loaded(tmp_path):
    """Every read adapter's tensors stayed on the device until installed: requests naming many adapters
    that then left (cancelled, timed out) kept them all there."""
    names = [f"style-{i}" for i in range(6)]
    for name in names:
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    settings = LoraSettings(adapters={name: {"source": str(tmp_path / f"{name}.safetensors")} for name in names}, max_per_request=2,
                            max_loaded=2)
    read = lambda *args, **kwargs: ({"x.lora_A.weight": torch.ones(4)}, None)  # noqa: E731
    store = AdapterStore(torch.nn.Linear(2, 2), read, settings, torch.device("cpu"))
    store.prefetch(names).result(timeout=60)
    assert store.reads_held == 6
    store.trim(wanted={"style-0"})  # style-0's request still waits; the others' requests left
    assert store.reads_held == 3  # style-0 kept, for its install
    store.trim(wanted=set())
    assert store.reads_held == 2  # the two asked for most recently
    store.prefetch(["style-1"]).result(timeout=60)  # dropped: read again when asked again
    assert store.reads_held == 3
