"""The bulk job's engine steps: EditRequests -> the engine's three stage classes, as Ray Data actors.

Each batch is a pandas frame with one row per manifest row: `id`, `item` (the stage contract the row
is at: EditRequest, Conditioning, Latents; the image's path once decoded), `error` (None while the
row is fine), the effective parameters, per-stage seconds and the wall-clock times at which the
engine began and finished the row (unix seconds).

No row can stop the job: a row that fails keeps its error and passes through the later steps
untouched; when a batch fails as a whole (say, out of memory) or a row fails for a reason that is not
its own input's, its rows run again one at a time and only those that fail alone become errors.

The Denoiser runs the online engine loop (deployments/batching/denoise_loop.py) under the same admission
policy: each actor takes several batches at once (threads), and the loop admits their rows between
steps within the token budget and row limit, so bulk has the online memory bound and continuous
admission.
"""

import dataclasses
import logging
import time
from concurrent.futures import wait

import pandas as pd
import ray.util.metrics

from cluster.bulk.result_cache import SharedResultCache
from cluster.bulk.results import image_columns
from cluster.bulk.storage import Output, image_path
from deployments import metrics
from deployments.batching.admission import AdmissionPolicy
from deployments.batching.denoise_loop import DenoiseLoop
from deployments.checkpoints.loader import model_name
from deployments.contracts import EditedImage
from deployments.errors import EditError, each_or_error, failed_alone
from deployments.settings.fast_path import FastPath
from deployments.settings.loop import LoopSettings
from deployments.settings.lora import LoraSettings
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from deployments.stages.encoder import Encoder

logger = logging.getLogger(__name__)


def own_fault(result) -> bool:
    """Whether a row's failure is its own input's (a 4xx: running it again alone would not help)."""
    return isinstance(result, EditError) and 400 <= result.status < 500


class StageActor:
    """Runs one engine stage over a batch's healthy rows; timing each row with its batch."""

    stage: str
    verb: str  # what failed, in an error message: "denoising"
    engine_class: type  # the engine's stage class this actor runs
    takes_adapters = False  # whether its engine class needs the LoRA settings

    def __init__(self, model: str, fast_path: FastPath, lora: LoraSettings):
        metrics.bind(ray.util.metrics)
        self.model_name = model_name(model)
        options = {"lora": lora} if self.takes_adapters else {}
        self.engine = self.engine_class(model, fast_path=fast_path, **options)

    def run(self, items: list, alone: bool) -> list:
        """Each item's result, or the exception it alone ended with; `alone`: sharing no work with others."""
        raise NotImplementedError

    def report(self, result) -> dict:
        """Result columns this stage adds for a row it finished (none by default)."""
        return {}

    def isolated(self, items: list) -> list:
        """Each item's result or EditError, every failure held to the row that fails alone."""
        try:
            results = self.run(items, alone=False)
        except Exception as error:  # the batch as a whole
            logger.warning("a %s batch of %d row(s) failed (%s); running its rows one at a time", self.stage, len(items), error)
            results = [error] * len(items)
        return [
            result if not isinstance(result, Exception) or own_fault(result) else self._alone(item)
            for item, result in zip(items, results)
        ]

    def _alone(self, item):
        try:
            (result,) = self.run([item], alone=True)
        except Exception as error:
            result = error
        return failed_alone(result, self.verb, item.request_id) if isinstance(result, Exception) else result

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        answered = batch.get("result_cache", pd.Series(None, index=batch.index)) == "hit"  # its image is written already
        healthy = batch.index[batch["error"].isna() & ~answered]
        started, started_at = time.perf_counter(), time.time()
        results = self.isolated(list(batch.loc[healthy, "item"])) if len(healthy) else []
        seconds = time.perf_counter() - started
        if len(healthy):
            metrics.record_batch(self.model_name, self.stage, len(healthy), seconds)
        items, errors = batch["item"].tolist(), batch["error"].tolist()
        positions = {label: i for i, label in enumerate(batch.index)}
        reports: dict[str, list] = {}
        for label, result in zip(healthy, results):
            i = positions[label]
            if isinstance(result, EditError):
                items[i], errors[i] = None, result.message
            else:
                items[i] = result
                for column, value in self.report(result).items():
                    if column not in reports:  # keep what the column holds for rows this stage didn't run (cache hits)
                        reports[column] = batch[column].tolist() if column in batch else [None] * len(batch)
                    reports[column][i] = value
        batch = batch.assign(item=items, error=errors, **reports)
        batch[f"{self.stage}_s"] = pd.Series(seconds, index=batch.index).mask(answered)  # the batch's time; none for a hit
        if "started_at" not in batch:  # the first engine stage to take the row
            batch["started_at"] = started_at
        batch["finished_at"] = time.time()  # the last one to be done with it has the final say
        return batch


class EncodeActor(StageActor):
    stage, verb = "encode", "encoding"
    engine_class = Encoder
    takes_adapters = True  # their schedulers decide the fewest steps

    def run(self, items, alone):
        return self.engine.encode_batch(items)


class DenoiseActor(StageActor):
    """Hands each batch's rows to the actor's engine loop and waits for them; several batches (one per
    concurrent call) are in the loop at once."""

    stage, verb = "denoise", "denoising"
    engine_class = Denoiser
    takes_adapters = True

    def __init__(self, model: str, fast_path: FastPath, lora: LoraSettings, loop: LoopSettings):
        super().__init__(model, fast_path, lora)
        # Ray Data bounds what waits here (calls in flight x batch size); nothing is refused.
        self.loop = DenoiseLoop(self.engine, AdmissionPolicy.from_settings(loop), max_waiting=2**31, model_name=self.model_name)

    def report(self, latents) -> dict:
        """A step-cached row's model forwards (results' cache_computed, cache_reused, cache_predicted)."""
        return {} if latents.cache is None else {f"cache_{outcome}": forwards for outcome, forwards in latents.cache.items()}

    def run(self, items, alone):
        tickets = [self.loop.submit(conditioning, solo=alone) for conditioning in items]
        wait([ticket.future for ticket in tickets])
        return [ticket.future.exception() or ticket.future.result() for ticket in tickets]


class DecodeActor(StageActor):
    """Decodes and writes each image atomically to OUT/images/; the row keeps its path (`output`), its
    quality report's columns and its provenance."""

    stage, verb = "decode", "decoding"
    engine_class = Decoder

    def __init__(self, model: str, fast_path: FastPath, lora: LoraSettings, output: Output, results: SharedResultCache | None):
        super().__init__(model, fast_path, lora)
        self.output = output
        self.results = results  # --result-cache: where each image made is also kept

    def run(self, items, alone):
        return each_or_error(lambda latents: self._write(self.engine.decode(latents)), items, self.verb)

    def report(self, edited: EditedImage) -> dict:
        """Where the image is, its quality report and its provenance record (as the image carries it)."""
        return image_columns(edited, image_path(edited.request_id, edited.format))

    def _write(self, edited: EditedImage) -> EditedImage:
        relative = image_path(edited.request_id, edited.format)
        try:
            self.output.write(relative, edited.data)
        except OSError as error:
            raise EditError(f"output: {relative} could not be written ({error})", "output") from error
        if self.results is not None:
            self.results.put(edited)
        return dataclasses.replace(edited, data=b"")  # the bytes are written; the row need not carry them on
