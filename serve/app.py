"""The typed app builder: `serve run serve/config.yaml` (or `serve deploy`) calls `build_app(args)`.

Ray Serve validates the config's `args` into `AppSettings` first, so a bad value fails the deployment
at start-up with a message naming it.
"""

from ray.serve import Application

from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.identity import engine_identity
from deployments.checkpoints.loader import model_name, resolve_model
from deployments.settings.environment import model_from_env
from serve.ingress import Ingress
from serve.result_cache import ResultCacheDeployment
from serve.schema import ServedModel
from serve.settings import AppSettings
from serve.stages import DecoderDeployment, DenoiserDeployment, EncoderDeployment


def build_app(settings: AppSettings) -> Application:
    model = model_from_env(settings.model)
    # Fail here, once and clearly, on a model that can't be found, rather than in every replica.
    ensure_generated(model)  # the tiny default on first use (each stage's node makes sure again)
    spec = resolve_model(model)
    name = settings.served_model_name or model_name(model)
    lora = settings.lora.offering_checkpoint_adapters(spec.path)  # the configured adapters and the checkpoint's own
    # what, besides a request, decides its image: the result cache's key (computed here, once: it reads the adapters' files)
    engine = engine_identity(spec, lora, settings.stage_engines()) if settings.result_cache.enabled else None
    served = ServedModel(name, spec, lora, engine)
    served.form_model(settings.limits, settings.request_timeout_s)  # refuses adapters the family can't use, here
    stage = {}
    for key, deployment in (("encoder", EncoderDeployment), ("denoiser", DenoiserDeployment), ("decoder", DecoderDeployment)):
        stage_settings = getattr(settings, key)
        stage[key] = deployment.options(**stage_settings.deployment.options()).bind(model, stage_settings, name, lora)
    cache = settings.result_cache
    results = ResultCacheDeployment.options(**cache.deployment.options()).bind(cache, name) if cache.enabled else None
    return Ingress.options(**settings.ingress.deployment.options()).bind(
        stage["encoder"], stage["denoiser"], stage["decoder"], settings, served, results
    )

