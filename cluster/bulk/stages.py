"""The bulk job's Ray Data steps: manifest rows -> EditRequests -> the engine's three stage classes.

Each batch is a pandas frame with one row per manifest row: `id`, `item` (the stage contract the row
is at: EditRequest, Conditioning, Latents; None once decoded), `error` (None while the row is fine),
the effective parameters and per-stage seconds. A row that fails keeps its error and passes through
the later steps untouched, so one bad row never stops the others.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs

from cluster.bulk.outputs import safe_name, write_atomic
from deployments.contracts import EditRequest, OutputSpec
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.errors import EditError, InvalidInputError

SIZE_AUTO = "auto"


@dataclass(frozen=True)
class Defaults:
    """Values for the manifest's optional columns, from the command line."""

    negative_prompt: str = " "
    seed: int = 0
    num_inference_steps: int = 8
    true_cfg_scale: float = 4.0
    output_format: str = "png"
    size: str = SIZE_AUTO


class ToRequests:
    """Manifest rows -> EditRequests: reads the image file(s), fills defaults, validates."""

    def __init__(self, defaults: Defaults, manifest_dir: str | None):
        self.defaults = defaults
        self.manifest_dir = manifest_dir

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for row in batch.to_dict("records"):
            params = self._params(row)
            out = {"id": row["id"], **params, "item": None, "error": None}
            try:
                out["item"] = self._request(row["id"], params, row["image"])
            except EditError as e:
                out["error"] = e.message
            except OSError as e:
                out["error"] = f"image: could not be read ({e})"
            rows.append(out)
        return pd.DataFrame(rows)

    def _params(self, row: dict) -> dict:
        def value(name):
            v = row.get(name)
            return getattr(self.defaults, name) if v is None or (isinstance(v, float) and pd.isna(v)) else v

        return {
            "instruction": row["instruction"],
            "negative_prompt": value("negative_prompt"),
            "seed": int(value("seed")),
            "num_inference_steps": int(value("num_inference_steps")),
            "true_cfg_scale": float(value("true_cfg_scale")),
            "output_format": value("output_format"),
            "size": value("size"),
        }

    def _request(self, row_id: str, params: dict, image) -> EditRequest:
        paths = [image] if isinstance(image, str) else list(image if image is not None else [])
        width, height = _parse_size(params["size"])
        return EditRequest(
            images=tuple(self._read(path) for path in paths),
            prompt=params["instruction"] or "",
            negative_prompt=params["negative_prompt"],
            seed=params["seed"],
            num_inference_steps=params["num_inference_steps"],
            true_cfg_scale=params["true_cfg_scale"],
            width=width,
            height=height,
            output=OutputSpec(format=params["output_format"]),
            request_id=row_id,
        )

    def _read(self, path: str) -> bytes:
        if "://" not in path and not Path(path).is_absolute() and self.manifest_dir:
            path = str(Path(self.manifest_dir) / path)  # relative paths are relative to the manifest
        filesystem, location = pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())
        with filesystem.open_input_stream(location) as stream:
            return stream.read()


def _parse_size(size: str) -> tuple[int | None, int | None]:
    if size == SIZE_AUTO:
        return None, None
    try:
        width, height = (int(side) for side in size.lower().split("x"))
    except ValueError:
        raise InvalidInputError("size", f"must be 'auto' or WIDTHxHEIGHT, got {size!r}") from None
    return width, height


class StageActor:
    """Runs one engine stage over a batch's healthy rows; timing each row with its batch."""

    stage: str

    def run(self, items: list) -> list:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        healthy = batch.index[batch["error"].isna()]
        started = time.perf_counter()
        results = self.run(list(batch.loc[healthy, "item"])) if len(healthy) else []
        seconds = time.perf_counter() - started
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
        return batch


class EncodeActor(StageActor):
    stage = "encode"

    def __init__(self, model: str):
        self.encoder = Encoder(model)

    def run(self, items):
        return self.encoder.encode_batch(items)


class DenoiseActor(StageActor):
    stage = "denoise"

    def __init__(self, model: str):
        self.denoiser = Denoiser(model)

    def run(self, items):
        return self.denoiser.denoise(items)


class DecodeActor(StageActor):
    """Decodes and writes each image atomically under OUT/images/; the row keeps only its path."""

    stage = "decode"

    def __init__(self, model: str, output_dir: str):
        self.decoder = Decoder(model)
        self.output_dir = Path(output_dir)

    def run(self, items):
        return [self._write(self.decoder.decode(latents)) for latents in items]

    def _write(self, edited) -> str:
        extension = "jpg" if edited.format == "jpeg" else edited.format
        relative = f"images/{safe_name(edited.request_id)}.{extension}"
        write_atomic(self.output_dir, relative, edited.data)
        return relative
