"""Manifest rows -> EditRequests, the first step of the bulk job: reads each row's image file(s) and
its other files (a mask; cluster/bulk/image_reads.py), fills null and missing parameters from the
job's flags, validates against the family's declaration and the limits (the same validation, and
messages, as the online API). It runs as Ray Data tasks, as many at once as the cluster has room for.

Kept apart from the stage actors so that its worker imports neither diffusers nor transformers:
several seconds less start-up on a small machine, where every worker's imports compete for cores.
"""

import json
from dataclasses import dataclass

import pandas as pd

from cluster.bulk.follow_ups import Pending
from cluster.bulk.image_reads import ImageReader
from cluster.bulk.manifest import file_columns, parameter_columns
from cluster.bulk.result_cache import SharedResultCache
from cluster.bulk.results import image_columns
from cluster.bulk.storage import Output, image_path
from deployments.checkpoints.loader import ModelSpec
from deployments.contracts import EditRequest
from deployments.errors import EditError, failed_alone
from deployments.media import metadata
from deployments.request.binding import parse
from deployments.request.fields import EditParameters
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings
from deployments.workflows.chains import chain_links, with_input
from deployments.workflows.guards import retry_seed
from deployments.workflows.result_cache import result_key


@dataclass(frozen=True)
class RequestBuilder:
    """What turns a manifest row into an EditRequest: the model's declaration, limits and adapters,
    the job's defaults, where images are read."""

    spec: ModelSpec
    limits: Limits
    lora: LoraSettings
    defaults: dict
    images: ImageReader
    output: Output
    results: SharedResultCache | None = None  # --result-cache: rows whose image it has are answered from it

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        model = _request_model(self.spec, self.limits, self.lora)
        columns = tuple(parameter_columns(self.spec.declared))
        files = file_columns(self.spec.declared)
        rows = []
        for row in batch.to_dict("records"):
            values = self._values(row, columns)
            out = {"id": row["id"], "instruction": row["instruction"], **values, "item": None, "error": None}
            try:
                uploads = {name: self.images.read(row[name], name) for name in files if _given(row.get(name))}
                values = {**values, **uploads, "prompt": row["instruction"], "image": self._images(row["image"])}
                parameters = parse(model, values)
                out.update(as_columns(parameters, columns))  # as used: defaults filled, adapters' scales resolved
                links = chain_links(model, parameters, values)
                out["item"], link = self._request(row["id"], links, Pending.of_row(row))
                out.update(links=len(links), seed=link.seed, guard=as_columns(link, ("guard",))["guard"])  # the link's own
                if self.results is not None:
                    out.update(self._from_cache(out["item"]))
            except Exception as e:  # the row's own failure (an EditError, or anything unforeseen): an error row, never a failed job
                out["error"] = failed_alone(e, "reading the row", row["id"]).message
            rows.append(out)
        return pd.DataFrame(rows)

    def _request(self, row_id: str, links: tuple[EditParameters, ...], pending: Pending) -> tuple[EditRequest, EditParameters]:
        """The row's next edit: its first link, or in a later pass the one `pending` says."""
        link, derived_from = links[pending.link], None
        if pending.image is not None:
            try:
                data = self.output.read(pending.image)
            except OSError as e:  # e.g. removed between passes
                raise EditError(f"image: the previous link's image {pending.image} could not be read ({e})", "image") from e
            link, derived_from = with_input(link, data), metadata.read(data)
        if pending.retry_of_seed is not None:
            link = link.model_copy(update={"seed": retry_seed(pending.retry_of_seed, 1)})
        last = pending.link == len(links) - 1  # its image is the row's result, OUT/images/<safe-id>.<ext>
        # NUL: no row's own id ends like an intermediate's, so no two requests share an image file
        request_id = row_id if last else f"{row_id}\x00link{pending.link + 1}"
        later = links[pending.link + 1 :]  # the Encoder checks them first (also after a link answered from the result cache)
        return EditRequest(link, request_id=request_id, derived_from=derived_from, later_links=later), link

    def _from_cache(self, request: EditRequest) -> dict:
        """The row's columns when the result cache has its image (written to OUT here), else a miss."""
        key = result_key(request, request.parameters.seed, self.spec.model_id, self.lora.sources(), self.results.engine)
        cached = self.results.get(key)
        if cached is None:
            return {"result_cache": "miss"}
        relative = image_path(request.request_id, cached.format)
        self.output.write(relative, cached.data)
        # no stage runs it: its request (with its input files' bytes) need not travel through theirs
        return {**image_columns(cached, relative), "result_cache": "hit", "item": None}

    def _values(self, row: dict, columns: tuple[str, ...]) -> dict:
        """The row's parameters: its own values, the job's defaults where it has none."""
        values = {}
        for name in columns:
            value = row.get(name)
            if not _given(value):
                value = self.defaults.get(name)
            if value is not None:
                values[name] = value.item() if hasattr(value, "item") else value  # numpy scalars -> Python
        return values

    def _images(self, image) -> list[bytes]:
        paths = [image] if isinstance(image, str) else list(image if image is not None else [])
        return [self.images.read(path) for path in paths]


def _given(value) -> bool:
    """Whether a cell holds a value (pandas reads a null as None, or NaN in a numeric column)."""
    return not (value is None or (isinstance(value, float) and pd.isna(value)))


_REQUEST_MODELS: dict[tuple, type[EditParameters]] = {}


def _request_model(spec: ModelSpec, limits: Limits, lora: LoraSettings) -> type[EditParameters]:
    """The bound request model, built once per worker process (it pickles poorly, so it is not sent;
    the settings are not hashable, their JSON is)."""
    key = (spec.model_id, limits.model_dump_json(), lora.model_dump_json())
    if key not in _REQUEST_MODELS:
        _REQUEST_MODELS[key] = spec.request_model(limits, lora)
    return _REQUEST_MODELS[key]


def as_columns(parameters: EditParameters, columns: tuple[str, ...]) -> dict:
    """The parameters' values as result columns: a structured one (`lora`, `cache`) as the JSON a manifest gives it in."""
    values = parameters.model_dump(mode="json", include=set(columns))
    return {name: json.dumps(value) if isinstance(value, (list, dict)) else value for name, value in values.items()}
