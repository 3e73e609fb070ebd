"""How an edited image was made, written into the image itself and read back from it.

The record (JSON) names the model (checkpoint id and family), every request value that decides the
pixels (prompt, steps, guidance, size, strength, adapters with their scales and sources, step cache,
output format; not `n` or `guard`, which don't), the image's own seed, the SHA-256 of each input file
(the images in order, the mask) and the versions of this project, diffusers and torch; a chained
edit's image also the record of the image it edited (`derived_from`), back to link 1. Images made
from the same record and inputs on the same software are the same, byte for byte: `python -m
deployments.cli.rerun` makes one again from an image's record and its input files.

Where it goes in the image, and how it is read back: deployments/media/metadata.py.
"""

import hashlib
import importlib.metadata
import tomllib
from functools import cache
from typing import Any

from deployments.request.fields import EditParameters
from deployments.settings.environment import PROJECT_DIR

# n and seed: the record has the image's own seed; guard never changes pixels; chain: each link has its record
NOT_RECORDED = ("n", "seed", "guard", "chain")


def record(
    parameters: EditParameters, model_id: str, adapter_sources: dict[str, str], derived_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The request's provenance, but for the seed (each image has its own: `with_seed`). `derived_from`:
    for a chain's later link, the record of the image it edits (so a chain's last image records them all)."""
    files = parameters.file_fields()
    values = parameters.model_dump(mode="json", exclude={*files, *NOT_RECORDED})
    inputs = {name: _hashes(getattr(parameters, name)) for name in files if getattr(parameters, name) is not None}
    made = {
        "model": model_id,
        "family": parameters.family,
        "parameters": values,
        "adapter_sources": {name: adapter_sources[name] for name, _ in parameters.adapters},
        "inputs_sha256": inputs,
        "software": software(),
    }
    return made if derived_from is None else {**made, "derived_from": derived_from}


def with_seed(provenance: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**provenance, "parameters": {**provenance["parameters"], "seed": seed}}


@cache
def software() -> dict[str, str]:
    # The project's own version from its pyproject.toml: a checkout run without `pip install` has no metadata.
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    return {project["name"]: project["version"]} | {name: importlib.metadata.version(name) for name in ("diffusers", "torch")}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hashes(files: bytes | list[bytes]) -> str | list[str]:
    return [sha256(data) for data in files] if isinstance(files, list) else sha256(files)
