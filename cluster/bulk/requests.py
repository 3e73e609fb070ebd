"""Manifest rows -> EditRequests, the first step of the bulk job: reads each row's image file(s),
fills the optional columns from the command line's defaults, validates.

Kept apart from the stage actors so that its worker imports neither diffusers nor transformers:
several seconds less start-up on a small machine, where every worker's imports compete for cores.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs

from deployments.contracts import EditRequest, OutputSpec
from deployments.errors import EditError, InvalidInputError
from deployments.parameters import GUIDANCE_FIELDS

SIZE_AUTO = "auto"


@dataclass(frozen=True)
class Defaults:
    """Values for the manifest's optional columns, from the command line."""

    negative_prompt: str | None = " "
    seed: int = 0
    num_inference_steps: int = 8
    true_cfg_scale: float | None = None  # guidance fields: None where the model's family doesn't take them
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
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
            **{name: None if value(name) is None else float(value(name)) for name in GUIDANCE_FIELDS},
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
            **{name: params[name] for name in GUIDANCE_FIELDS},
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
