"""The three stages of one checkpoint in this process, without Ray: the CLIs (deployments/cli/), the
benchmarks' in-process baselines (cluster/bench/) and the engine tests run edits through the same
stage classes the cluster runs, the way the edges make requests."""

import logging
import time
from typing import Any

from deployments.checkpoints.loader import resolve_model
from deployments.contracts import Conditioning, EditedImage, EditRequest
from deployments.request.binding import parse
from deployments.request.fields import EditParameters
from deployments.settings.fast_path import FastPath
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from deployments.stages.encoder import Encoder

logger = logging.getLogger(__name__)


class InProcessStages:
    """An Encoder, a Denoiser and a Decoder of `model` (`lora`: the adapters requests may name; `limits`:
    what requests are held to, as online)."""

    def __init__(self, model: str, lora: LoraSettings = LoraSettings(), fast_path: FastPath = FastPath(), limits: Limits = Limits()):
        self.model, self.lora = model, lora
        self.encoder = Encoder(model, fast_path=fast_path, lora=lora)
        self.denoiser = Denoiser(model, fast_path=fast_path, lora=lora)
        self.decoder = Decoder(model, fast_path=fast_path)
        self.request_model = resolve_model(model).request_model(limits, lora)

    def request(self, values: dict[str, Any]) -> EditRequest:
        """What every edge makes of `values` (uploads as bytes): validated, with the defaults filled in."""
        return EditRequest(parse(self.request_model, values))

    def conditioning(self, values: dict[str, Any]) -> Conditioning:
        return self.encoder.encode(self.request(values))

    def edit(self, parameters: EditParameters, derived_from: dict | None = None, later_links: tuple = ()) -> EditedImage:
        """One edit (`derived_from`: for a chain's later link, the provenance record of the image it edits;
        `later_links`: for its link 1, the links after it, which the Encoder checks first)."""
        start = time.perf_counter()
        request = EditRequest(parameters, derived_from=derived_from, later_links=later_links)
        edited = self.decoder.decode(self.denoiser.denoise([self.encoder.encode(request)])[0])
        logger.info("made a %dx%d %s in %.2fs with %s", edited.width, edited.height, edited.format, time.perf_counter() - start, self.model)
        return edited
