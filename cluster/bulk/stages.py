"""The bulk job's engine steps: EditRequests -> the engine's three stage classes, as Ray Data actors.

Each batch is a pandas frame with one row per manifest row: `id`, `item` (the stage contract the row
is at: EditRequest, Conditioning, Latents; None once decoded), `error` (None while the row is fine),
the effective parameters, per-stage seconds and the wall-clock times at which the engine began and
finished the row (unix seconds). A row that fails keeps its error and passes through
the later steps untouched, so one bad row never stops the others.
"""

import time
from pathlib import Path

import pandas as pd
import ray.util.metrics

from cluster.bulk.outputs import safe_name, write_atomic
from deployments import metrics
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.errors import EditError, each_or_error
from deployments.fast_path import FastPath
from deployments.lora_settings import LoraSettings
from deployments.models import model_name


class StageActor:
    """Runs one engine stage over a batch's healthy rows; timing each row with its batch."""

    stage: str
    engine_class: type  # the engine's stage class this actor runs
    takes_adapters = False  # whether its engine class needs the LoRA settings

    def __init__(self, model: str, fast_path: FastPath, lora: LoraSettings):
        metrics.bind(ray.util.metrics)
        self.model_name = model_name(model)
        options = {"lora": lora} if self.takes_adapters else {}
        self.engine = self.engine_class(model, fast_path=fast_path, **options)

    def run(self, items: list) -> list:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        healthy = batch.index[batch["error"].isna()]
        started, started_at = time.perf_counter(), time.time()
        results = self.run(list(batch.loc[healthy, "item"])) if len(healthy) else []
        seconds = time.perf_counter() - started
        if len(healthy):
            metrics.record_batch(self.model_name, self.stage, len(healthy), seconds)
        items, errors = batch["item"].tolist(), batch["error"].tolist()
        positions = {label: i for i, label in enumerate(batch.index)}
        for label, result in zip(healthy, results):
            i = positions[label]
            if isinstance(result, EditError):
                items[i], errors[i] = None, result.message
            else:
                items[i] = result
        batch = batch.assign(item=items, error=errors)
        batch[f"{self.stage}_s"] = seconds
        if "started_at" not in batch:  # the first engine stage to take the row
            batch["started_at"] = started_at
        batch["finished_at"] = time.time()  # the last one to be done with it has the final say
        return batch


class EncodeActor(StageActor):
    stage = "encode"
    engine_class = Encoder
    takes_adapters = True  # their schedulers decide the fewest steps

    def run(self, items):
        return self.engine.encode_batch(items)


class DenoiseActor(StageActor):
    stage = "denoise"
    engine_class = Denoiser
    takes_adapters = True

    def run(self, items):
        return self.engine.denoise_batch(items)


class DecodeActor(StageActor):
    """Decodes and writes each image atomically under OUT/images/; the row keeps only its path."""

    stage = "decode"
    engine_class = Decoder

    def __init__(self, model: str, fast_path: FastPath, lora: LoraSettings, output_dir: str):
        super().__init__(model, fast_path, lora)
        self.output_dir = Path(output_dir)

    def run(self, items):
        return each_or_error(lambda latents: self._write(self.engine.decode(latents)), items, "decoding")

    def _write(self, edited) -> str:
        extension = "jpg" if edited.format == "jpeg" else edited.format
        relative = f"images/{safe_name(edited.request_id)}.{extension}"
        write_atomic(self.output_dir, relative, edited.data)
        return relative
