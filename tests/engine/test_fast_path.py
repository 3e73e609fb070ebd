"""Every fast-path setting gives the plain path's result on the tiny model (on a CPU here; the same
settings run on CUDA)."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from deployments.devices import fp8
from deployments.devices.transfer import to_device, to_host
from deployments.settings.fast_path import FastPath
from deployments.settings.loop import LoopSettings
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from tests.helpers import edit_request, image_bytes, random_image


@pytest.fixture(scope="module")
def conditioning(stages):
    request = edit_request(stages["edit-plus"].model, [image_bytes(random_image(96, 64, seed=4))], prompt="fast, please",
                           negative_prompt="blurry", seed=3, num_inference_steps=3)
    return stages["edit-plus"].encoder.encode(request)


@pytest.fixture(scope="module")
def plain(stages, conditioning):
    return stages["edit-plus"].denoiser.denoise([conditioning])[0]


CUDA_ONLY = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py); `pytest -m gpu` runs them all


@pytest.mark.parametrize("backend", [
    "_native_math",
    pytest.param("_native_flash", marks=CUDA_ONLY),
    pytest.param("_native_cudnn", marks=CUDA_ONLY),
    pytest.param("_native_efficient", marks=CUDA_ONLY),
])
def test_explicit_attention_backends(stages, conditioning, plain, backend):
    fast = Denoiser(stages["edit-plus"].model, fast_path=FastPath(attention_backend=backend))
    tolerance = 1e-5 if fast.family.device.type == "cpu" else 2e-2  # bf16 kernels on CUDA
    assert torch.allclose(fast.denoise([conditioning])[0].latents, plain.latents, atol=tolerance, rtol=0)


def compilations() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def compiled(stages):
    """A Denoiser with the compiled block (compiled while warming up), and how many graphs that compiled."""
    torch._dynamo.reset()  # as in a new process: compiled Denoisers of other tests share the block's compiled code
    before = compilations()
    denoiser = Denoiser(stages["edit-plus"].model, fast_path=FastPath(compile=True))
    return denoiser, compilations() - before


def test_regional_compile_is_warmed_up_and_exact(compiled, conditioning, plain):
    compiled, _ = compiled
    blocks = compiled.family.loaded["transformer"].transformer_blocks
    assert all(block._compiled_call_impl is not None for block in blocks)  # nn.Module.compile, block by block
    assert torch.allclose(compiled.denoise([conditioning])[0].latents, plain.latents, atol=1e-5, rtol=0)


# Graphs of the repeated block the warm-up compiles: two per variant (a prompt mask or none; one row or
# several) — Dynamo compiles each variant twice within its first forward here — and two more for padded
# prompts, whose attention runs eagerly, row group by row group (a graph break). None after.
WARM_UP_COMPILATIONS = 10


def test_compiled_batches_of_every_size_compile_nothing_new_and_match_solo(stages, compiled):
    """Batches of 1 to max_batch_rows rows, with and without CFG, prompts of different lengths (padded,
    masked) and another image shape than the warm-up's: no compilation after the warm-up (Dynamo's limit
    is 8 per function: a per-row Python loop compiled once per row count and fell back to eager at 4
    rows), and each request's step is the one it takes alone."""
    compiled, warm_up_compilations = compiled
    assert warm_up_compilations == WARM_UP_COMPILATIONS
    before = compilations()
    prompts = ["a", "make the sky pink", "배경을 해변으로 바꿔줘", "add rain over the whole street, and a red bicycle by the door"]
    model = stages["edit-plus"].model
    image = image_bytes(random_image(64, 96, seed=6))
    guided = [edit_request(model, [image], prompt=prompts[i % 4], negative_prompt=prompts[(i + 1) % 4], seed=i) for i in range(8)]
    unguided = edit_request(model, [image], prompt=prompts[3], seed=9)
    encode = stages["edit-plus"].encoder.encode
    guided, unguided = [encode(request) for request in guided], encode(unguided)

    def one_step(conditionings):
        jobs = [compiled.start(c) for c in conditionings]
        assert compiled.step(jobs) == {}
        return [job.latents for job in jobs]

    solo = {id(c): one_step([c])[0] for c in [*guided, unguided]}
    for rows in range(1, LoopSettings().max_batch_rows + 1):
        batch = guided[: rows // 2] + [unguided] * (rows % 2)
        for c, latents in zip(batch, one_step(batch)):
            assert torch.allclose(latents, solo[id(c)], atol=1e-5, rtol=0), f"{rows} rows"
    assert compilations() == before


def test_vae_slicing_is_exact_and_tiling_leaves_images_below_a_tile_alone(stages, conditioning, plain):
    sliced = Decoder(stages["edit-plus"].model, fast_path=FastPath(vae_slicing=True))
    assert sliced.family.loaded["vae"].use_slicing
    assert np.abs(sliced.decode_pixels(plain) - stages["edit-plus"].decoder.decode_pixels(plain)).max() <= 1e-6
    # Tiling blends overlapping tiles above the tile size (256 px here): it trades exactness for memory
    # on large images, so only images within one tile must come out unchanged.
    request = edit_request(stages["edit-plus"].model, [image_bytes(random_image(64, 64))], prompt="small", seed=1,
                           num_inference_steps=2, size="128x128")
    small = stages["edit-plus"].denoiser.denoise([stages["edit-plus"].encoder.encode(request)])[0]
    tiled = Decoder(stages["edit-plus"].model, fast_path=FastPath(vae_tiling=True))
    assert tiled.family.loaded["vae"].use_tiling
    assert np.abs(tiled.decode_pixels(small) - stages["edit-plus"].decoder.decode_pixels(small)).max() <= 1e-6


def test_plain_transfers_give_the_pinned_path_s_result(stages, conditioning, plain):
    unpinned = Denoiser(stages["edit-plus"].model, fast_path=FastPath(pinned_transfers=False))
    assert torch.equal(unpinned.denoise([conditioning])[0].latents, plain.latents)


def test_transfers_on_a_cpu_are_plain_copies():
    tensor = torch.arange(6.0).view(2, 3).t()  # not contiguous
    (host,) = to_host((tensor,), pinned=True)
    assert host.is_contiguous() and torch.equal(host, tensor)
    assert torch.equal(to_device(host, torch.device("cpu"), pinned=True, dtype=torch.bfloat16), tensor.bfloat16())


@CUDA_ONLY
def test_pinned_transfers_go_through_page_locked_memory():
    tensors = (torch.randn(4096, 64, device="cuda", dtype=torch.bfloat16), torch.ones(77, device="cuda", dtype=torch.long))
    host = to_host(tensors, pinned=True)
    assert all(t.is_pinned() and t.device.type == "cpu" for t in host)
    assert all(torch.equal(h, t.cpu()) for h, t in zip(host, tensors))
    back = to_device(host[0].clone(), torch.device("cuda"), pinned=True)  # a pageable tensor, as unpickled
    assert torch.equal(back, tensors[0])


def test_a_forced_backend_is_refused_for_a_unet_which_has_no_dispatcher(stages):
    with pytest.raises(ValueError, match="UNet2DConditionModel calls PyTorch SDPA directly"):
        Denoiser(stages["ip2p"].model, fast_path=FastPath(attention_backend="_native_math"))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        FastPath(attention_backend="fastest")


# What makes a device tensor's value come to the host, or host data go to the device: each a
# host-device sync on a GPU (a pageable host-to-device copy waits for the stream).
HOST_READS = ("__bool__", "__int__", "__float__", "item", "tolist", "cpu", "numpy")
HOST_DATA_TO_DEVICE = ("tensor", "as_tensor")  # with a device


def test_a_denoising_step_moves_no_value_between_host_and_device(stages, conditioning, monkeypatch):
    """The CPU-side proxy of the CUDA test below: in a step of requests with prompts of different
    lengths (padded), with and without CFG, nothing reads a tensor's value on the host (e.g. `None if
    mask.all() else mask`) and no tensor is made from host data on the device (diffusers' masked
    attention path does, once per forward: `torch.as_tensor(length, device=...)`)."""
    other = stages["edit-plus"].encoder.encode(edit_request(
        stages["edit-plus"].model, [image_bytes(random_image(96, 64, seed=5))], seed=4, num_inference_steps=3,
        prompt="a much longer instruction, with many more words than the other one has", true_cfg_scale=1.0,
    ))
    denoiser = Denoiser(stages["edit-plus"].model)
    jobs = [denoiser.start(conditioning), denoiser.start(other)]
    denoiser.step(jobs)  # the scheduler finds its step index once, on the first step
    moves = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _name=name, _original=original, **k: moves.append(_name) or _original(self, *a, **k))
    for name in HOST_DATA_TO_DEVICE:
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _name=name, _original=original, **k: ("device" in k and moves.append(_name)) or _original(*a, **k))
    denoiser.step(jobs)  # padded prompts
    denoiser.step(jobs[:1])  # one request's prompt and negative prompt: padded too
    monkeypatch.undo()
    assert moves == []


def test_a_denoising_step_builds_no_rope_table(stages, conditioning):
    """diffusers caches Qwen-Image's RoPE tables on the device (QwenEmbedRope: one frequency table per
    device, one per latent shape), so after a request's first step no step copies a table to the GPU.
    Checked on its caches: a diffusers change that drops them fails here (then the engine needs its own)."""
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    def misses():
        caches = [cell.cell_contents for method in (QwenEmbedRope._get_device_freqs, QwenEmbedRope._compute_video_freqs)
                  for cell in method.__closure__ if hasattr(cell.cell_contents, "cache_info")]
        assert len(caches) == 2
        return [cache.cache_info().misses for cache in caches]

    denoiser = stages["edit-plus"].denoiser
    job = denoiser.start(conditioning)
    denoiser.step([job])
    before = misses()
    denoiser.step([job])
    denoiser.step([denoiser.start(conditioning)])  # another request of the same shapes
    assert misses() == before
    other = stages["edit-plus"].encoder.encode(edit_request(
        stages["edit-plus"].model, [image_bytes(random_image(128, 64, seed=7))], prompt="wider", seed=1, num_inference_steps=2,
    ))
    denoiser.step([denoiser.start(other)])
    assert misses()[1] > before[1]  # a new shape's table, once (the caches are in use)


@CUDA_ONLY  # host-device syncs exist only with a device
@pytest.mark.parametrize("variant, prompts", [
    ("edit-plus", ["fast, please"]),
    ("edit-plus", ["fast, please", "a much longer instruction, with many more words than the other one"]),  # padded: a mask
    ("ip2p", ["make it snow"]),  # its ancestral noise comes with the request
])
def test_a_denoising_step_never_waits_for_the_gpu(stages, variant, prompts):
    model = stages[variant].model
    conditionings = [stages[variant].encoder.encode(edit_request(model, [image_bytes(random_image(96, 64, seed=4))], prompt=prompt, seed=i))
                     for i, prompt in enumerate(prompts)]
    denoiser = Denoiser(model, device=torch.device("cuda"))
    jobs = [denoiser.start(c) for c in conditionings]
    denoiser.step(jobs)  # the scheduler finds its step index, RoPE its tables, once, on the first step
    torch.cuda.set_sync_debug_mode("error")  # any .item() / .tolist() / blocking copy now raises
    try:
        assert denoiser.step(jobs) == {}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fp8_quantizes_the_attention_and_mlp_linears_and_keeps_the_sensitive_ones_in_bf16(stages):
    transformer = stages["edit-plus"].denoiser.family.loaded["transformer"]
    linears = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
    kept = {name for name in linears if not fp8.quantized(name)}
    assert kept == {name for name in linears if name.startswith(("time_text_embed.", "img_in", "txt_in", "norm_out.", "proj_out"))
                    or ".img_mod." in name or ".txt_mod." in name or name.endswith(".img_mlp.net.2")}
    block = {name.split(".", 2)[2] for name in linears if name.startswith("transformer_blocks.0.") and fp8.quantized(name)}
    assert block == {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                     "attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj", "txt_mlp.net.0.proj", "txt_mlp.net.2"}


@pytest.mark.parametrize("model_class, device, capability, refusal", [
    ("QwenImageTransformer2DModel", "cpu", None, "needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9+"),
    ("QwenImageTransformer2DModel", "cuda", (8, 0), "this GPU has compute capability 8.0"),  # A100
    ("UNet2DConditionModel", "cuda", (9, 0), "only Qwen-Image's transformer is quantized, not a UNet2DConditionModel"),
    ("QwenImageTransformer2DModel", "cuda", (8, 9), None),  # L4
    ("QwenImageTransformer2DModel", "cuda", (9, 0), None),  # H100, H200
])
def test_fp8_is_refused_where_it_cannot_run(model_class, device, capability, refusal):
    reason = fp8.refusal(model_class, device, capability)
    assert reason == refusal if refusal is None else refusal in reason


def test_the_torchao_api_fp8_uses_is_installed():
    """What `fp8.quantize` calls exists in the pinned torchao (it can only run on a GPU), and means
    what deployments/devices/fp8.py says: one scale per row for activations and for weights."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    assert callable(quantize_)
    activations, weights = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()).granularity
    assert isinstance(activations, PerRow) and isinstance(weights, PerRow)


def test_fp8_on_a_cpu_fails_the_denoiser_at_start_with_the_setting_named(stages):
    with pytest.raises(ValueError, match=r"^fp8: needs an NVIDIA GPU .* this Denoiser runs on cpu; set fp8 false"):
        Denoiser(stages["edit-plus"].model, fast_path=FastPath(fp8=True))


@CUDA_ONLY
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < fp8.FP8_CAPABILITY,
                    reason="FP8 tensor cores only")
def test_fp8_denoises_close_to_bf16(stages, conditioning):
    fast = Denoiser(stages["edit-plus"].model, fast_path=FastPath(fp8=True))
    assert "Float8" in type(fast.family.loaded["transformer"].transformer_blocks[0].attn.to_q.weight).__name__
    latents = fast.denoise([conditioning])[0].latents.float()
    reference = Denoiser(stages["edit-plus"].model).denoise([conditioning])[0].latents.float()
    assert torch.nn.functional.cosine_similarity(latents.flatten(), reference.flatten(), dim=0) > 0.99
