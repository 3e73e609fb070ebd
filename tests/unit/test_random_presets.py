"""The full-size random presets have the published architectures: built on the `meta` device (no
memory), their parameter counts are the real models'."""

import pytest
import torch

from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import load_components, resolve_model
from deployments.errors import ModelLoadError


@pytest.fixture(scope="module")
def meta_components():
    ensure_generated("random:qwen-image-edit-2509")  # its configs, written on first use
    spec = resolve_model("random:qwen-image-edit-2509")
    assert spec.pipeline_class == "QwenImageEditPlusPipeline" and spec.random_weights
    names = ("transformer", "text_encoder", "vae")
    return load_components(spec, names, torch.device("meta"), torch.bfloat16)


def billions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def test_transformer_is_the_20B_mmdit(meta_components):
    transformer = meta_components["transformer"]
    assert 20.3 < billions(transformer) < 20.5
    assert len(transformer.transformer_blocks) == 60 and transformer.config.joint_attention_dim == 3584
    assert next(transformer.parameters()).dtype == torch.bfloat16  # built in the target dtype


def test_text_encoder_is_qwen25_vl_7b(meta_components):
    assert 8.2 < billions(meta_components["text_encoder"]) < 8.4  # 7.6B language model + 0.7B vision tower


def test_vae_is_qwen_image_vae(meta_components):
    vae = meta_components["vae"]
    assert vae.config.z_dim == 16 and vae.config.base_dim == 96
    assert 0.1 < billions(vae) < 0.3


def test_presets_refuse_the_cpu_and_unknown_names():
    ensure_generated("random:qwen-image-edit")
    spec = resolve_model("random:qwen-image-edit")
    assert spec.pipeline_class == "QwenImageEditPipeline"
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_components(spec, ("vae",), torch.device("cpu"), torch.float32)
    with pytest.raises(ModelLoadError, match="random:qwen-image-edit-2509"):
        resolve_model("random:qwen-image-edit-9999")
