"""Checkpoints load offline through the one loader real checkpoints use; stages load only their parts."""

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from deployments.checkpoints import tiny
from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import resolve_model
from deployments.checkpoints.tiny import TINY_BUILD, write_checkpoint
from deployments.errors import ModelLoadError
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from deployments.stages.in_process import InProcessStages
from tests.helpers import edit_request, image_bytes, random_image


def test_written_checkpoint_reloads_offline_with_an_empty_cache(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    cache = Path(os.environ["HF_HOME"])
    assert not any(cache.rglob("*.safetensors"))  # nothing came from (or went to) a hub cache

    model = str(write_checkpoint(tmp_path / "ckpt", "edit"))
    spec = resolve_model(model)
    assert spec.pipeline_class == "QwenImageEditPipeline"
    assert spec.settings.vae_image_area == 256 * 256

    stages = InProcessStages(model)
    encoder, denoiser, decoder = stages.encoder, stages.denoiser, stages.decoder
    assert set(encoder.family.loaded) == {"processor", "text_encoder", "vae", "scheduler"}  # its config only
    assert set(denoiser.family.loaded) == {"transformer", "scheduler"}
    assert set(decoder.family.loaded) == {"vae"}
    assert denoiser.family.loaded["transformer"].dtype == torch.float32  # fp32 on CPU

    request = edit_request(model, [image_bytes(random_image(64, 64))], prompt="hello", num_inference_steps=2)
    edited = stages.edit(request.parameters)
    assert edited.data.startswith(b"\x89PNG") and (edited.width, edited.height) == (256, 256)
    assert not any(cache.rglob("*.safetensors"))


def test_model_weights_are_read_straight_onto_the_stage_s_device(tiny_checkpoints, monkeypatch):
    """Every torch component is loaded with `device_map` = the stage's device (diffusers and transformers
    then put each tensor from the file on the device), not built in host memory and moved after."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    calls = []
    for cls in (QwenImageTransformer2DModel, AutoencoderKLQwenImage):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained", classmethod(
            lambda klass, *a, _original=original, **k: calls.append((klass.__name__, k.get("device_map"))) or _original(klass, *a, **k)
        ))
    denoiser, decoder = Denoiser(tiny_checkpoints["edit-plus"]), Decoder(tiny_checkpoints["edit-plus"])
    device = torch.device("cpu")
    assert calls == [("QwenImageTransformer2DModel", device), ("AutoencoderKLQwenImage", device)]
    assert denoiser.family.loaded["transformer"].device == decoder.family.loaded["vae"].device == device


def test_tokenizer_vocab_matches_text_encoder(stages):
    family = stages["edit-plus"].encoder.family
    tokenizer = family.loaded["processor"].tokenizer
    config = family.loaded["text_encoder"].config
    assert len(tokenizer) == config.text_config.vocab_size > 256
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") == config.vision_start_token_id
    assert tokenizer("배경").input_ids != [tokenizer.unk_token_id]


def test_hub_id_not_in_cache_fails_clearly_offline():
    with pytest.raises(ModelLoadError) as info:
        resolve_model("Qwen/Qwen-Image-Edit-2509", ("transformer",))
    assert "Qwen/Qwen-Image-Edit-2509" in info.value.message


def test_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        resolve_model(str(tmp_path))


def use_as_tiny_default(monkeypatch, target: Path) -> None:
    """Makes `target` count as one of the tiny defaults (variant "edit"), with its lock beside it."""
    monkeypatch.setattr("deployments.checkpoints.generated.TINY_MODEL_DIRS", {target.resolve(): "edit"})
    monkeypatch.setattr("deployments.checkpoints.loader.TINY_MODEL_DIRS", {target.resolve(): "edit"})
    monkeypatch.setattr("deployments.checkpoints.generated.MODELS_DIR", target.parent)
    monkeypatch.setattr("deployments.checkpoints.generated.LOCK_FILE", target.parent / ".generate.lock")


def test_loading_never_generates_the_tiny_default_one_explicit_call_does(tmp_path, monkeypatch):
    target = tmp_path / "tiny-edit"
    use_as_tiny_default(monkeypatch, target)
    with pytest.raises(ModelLoadError, match="generated on first use"):
        resolve_model(str(target))
    assert not target.exists()
    ensure_generated(str(target))
    assert resolve_model(str(target)).pipeline_class == "QwenImageEditPipeline"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".generate.lock", "tiny-edit"]  # no scratch copy left
    ensure_generated(str(tmp_path / "somewhere-else"))  # not a generated model: nothing happens
    assert not (tmp_path / "somewhere-else").exists()


def test_a_stale_default_tiny_checkpoint_is_rebuilt(tmp_path, monkeypatch):
    target = tmp_path / "tiny-edit"
    use_as_tiny_default(monkeypatch, target)
    ensure_generated(str(target))
    (target / "tiny_build.txt").write_text("0\n")  # as if an older builder had written it
    (target / "leftover.bin").write_bytes(b"old")
    ensure_generated(str(target))
    assert not (target / "leftover.bin").exists()
    assert (target / "tiny_build.txt").read_text().strip() == str(TINY_BUILD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".generate.lock", "tiny-edit"]


def test_replicas_starting_together_generate_once_and_load_a_whole_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "tiny-edit"
    use_as_tiny_default(monkeypatch, target)
    writes = tmp_path.parent / f"{tmp_path.name}-writes.log"
    real_write = tiny.write_checkpoint

    def counted_write(out, variant):
        with open(writes, "a") as log:
            log.write(f"{out}\n")
        return real_write(out, variant)

    monkeypatch.setattr(tiny, "write_checkpoint", counted_write)
    context = multiprocessing.get_context("fork")  # the children keep this test's patches
    with context.Pool(3) as pool:
        pipelines = pool.map(_generate_and_resolve, [str(target)] * 3)
    assert pipelines == ["QwenImageEditPipeline"] * 3
    assert len(writes.read_text().splitlines()) == 1


def _generate_and_resolve(model: str) -> str:
    ensure_generated(model)
    return resolve_model(model).pipeline_class
