"""Manifest rows -> EditRequests, the first step of the bulk job: reads each row's image file(s),
fills null and missing parameters from the job's flags, validates against the family's declaration
and the limits (the same validation, and messages, as the online API).

Kept apart from the stage actors so that its worker imports neither diffusers nor transformers:
several seconds less start-up on a small machine, where every worker's imports compete for cores.
"""

from pathlib import Path

import json

import pandas as pd
import pyarrow.fs

from cluster.bulk.manifest import parameter_columns
from deployments.contracts import EditRequest
from deployments.errors import EditError
from deployments.limits import Limits
from deployments.lora_settings import LoraSettings
from deployments.models import ModelSpec
from deployments.parameters import EditParameters, parse


class ToRequests:
    """Manifest rows -> EditRequests: reads the image file(s), fills defaults, validates."""

    def __init__(self, spec: ModelSpec, limits: Limits, lora: LoraSettings, defaults: dict, manifest_dir: str | None):
        self.model = spec.request_model(limits, lora)  # built here: a bound model pickles poorly
        self.columns = tuple(parameter_columns(spec.declared))
        self.defaults = defaults
        self.manifest_dir = manifest_dir

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for row in batch.to_dict("records"):
            values = self._values(row)
            out = {"id": row["id"], "instruction": row["instruction"], **values, "item": None, "error": None}
            try:
                parameters = parse(self.model, {**values, "prompt": row["instruction"], "image": self._images(row["image"])})
                out["item"] = EditRequest(parameters, request_id=row["id"])
                out.update(as_columns(parameters, self.columns))  # as used: defaults filled, adapters' scales resolved
            except EditError as e:
                out["error"] = e.message
            except OSError as e:
                out["error"] = f"image: could not be read ({e})"
            rows.append(out)
        return pd.DataFrame(rows)

    def _values(self, row: dict) -> dict:
        """The row's parameters: its own values, the job's defaults where it has none."""
        values = {}
        for name in self.columns:
            value = row.get(name)
            if value is None or (isinstance(value, float) and pd.isna(value)):
                value = self.defaults.get(name)
            if value is not None:
                values[name] = value.item() if hasattr(value, "item") else value  # numpy scalars -> Python
        return values

    def _images(self, image) -> list[bytes]:
        paths = [image] if isinstance(image, str) else list(image if image is not None else [])
        return [self._read(path) for path in paths]

    def _read(self, path: str) -> bytes:
        if "://" not in path and not Path(path).is_absolute() and self.manifest_dir:
            path = str(Path(self.manifest_dir) / path)  # relative paths are relative to the manifest
        filesystem, location = pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())
        with filesystem.open_input_stream(location) as stream:
            return stream.read()


def as_columns(parameters: EditParameters, columns: tuple[str, ...]) -> dict:
    """The parameters' values as result columns: a structured one (`lora`) as the JSON a manifest gives it in."""
    values = parameters.model_dump(mode="json", include=set(columns))
    return {name: json.dumps(value) if isinstance(value, list) else value for name, value in values.items()}
