import pytest
import torch
from diffusers import QwenImageEditInpaintPipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import (
    pipeline_qwenimage_edit,
    pipeline_qwenimage_edit_inpaint,
    pipeline_qwenimage_edit_plus,
)

from deployments.settings.engine import EngineSettings
from deployments.stages.in_process import InProcessStages

# The diffusers pipelines the engine must reproduce: name -> (class, its module, the tiny checkpoint).
REFERENCES = {
    "edit": (QwenImageEditPipeline, pipeline_qwenimage_edit, "edit"),
    "edit-plus": (QwenImageEditPlusPipeline, pipeline_qwenimage_edit_plus, "edit-plus"),
    "inpaint": (QwenImageEditInpaintPipeline, pipeline_qwenimage_edit_inpaint, "edit"),
}


@pytest.fixture(scope="session")
def stages(tiny_checkpoints) -> dict[str, InProcessStages]:
    """The three stage classes of each tiny checkpoint, in this process."""
    return {variant: InProcessStages(path) for variant, path in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def reference(tiny_checkpoints):
    """Runs a diffusers reference pipeline: run(name, monkeypatch, images, seed=..., cache=None, **call
    arguments) -> its (H, W, 3) float image (`cache`: a diffusers cache config for its transformer).

    The reference pipelines hard-code ~1024x1024 VAE and 384x384 VL-condition areas (via module-level
    `calculate_dimensions` calls). The engine reads these areas from the checkpoint's settings; the
    tiny checkpoints record small ones so CPU tests stay fast. So each reference run patches diffusers'
    `calculate_dimensions` to map its hard-coded areas to the checkpoint's, which changes nothing but
    the sizes both sides compute."""
    pipelines = {}

    def pipeline(name):
        """The reference pipeline `name`, loaded once."""
        if name not in pipelines:
            pipeline_cls, _, variant = REFERENCES[name]
            pipelines[name] = pipeline_cls.from_pretrained(tiny_checkpoints[variant])
        return pipelines[name]

    def run(name, monkeypatch, images, cache=None, **kwargs):
        _, module, variant = REFERENCES[name]
        settings = EngineSettings.for_model(tiny_checkpoints[variant])
        areas = {1024 * 1024: settings.vae_image_area, 384 * 384: settings.condition_image_area}
        original = module.calculate_dimensions
        monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: original(areas[area], ratio))
        image = images if name == "edit-plus" else images[0]
        generator = torch.Generator("cpu").manual_seed(kwargs.pop("seed"))
        chosen = pipeline(name)
        if cache is not None:  # a diffusers cache config (FirstBlockCacheConfig, TaylorSeerCacheConfig)
            chosen.transformer.enable_cache(cache)
        try:
            return chosen(image=image, generator=generator, output_type="np", **kwargs).images[0]
        finally:
            if cache is not None:
                chosen.transformer.disable_cache()

    run.pipeline = pipeline
    return run
