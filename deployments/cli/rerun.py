"""Makes an edited image again from the provenance record it carries (deployments/workflows/provenance.py):

    python -m deployments.cli.rerun EDITED.png --image INPUT.png [--image INPUT2.png] [--mask MASK.png] --out AGAIN.png

The record has the model, every parameter and the seed, but only the SHA-256 of each input file: give
the same files (checked against the record). A chained edit's image is made again link by link from
the first link's inputs. With the same model and software versions the result is
the same file, byte for byte; the command says whether it is. `--limits` and `--adapters` are the
original deployment's (a Serve config file), when the record goes beyond the default limits or names
adapters other than the checkpoint's own.
"""

import argparse
import logging
import sys
from pathlib import Path

from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import resolve_model
from deployments.errors import EditError, InvalidInputError
from deployments.media import metadata
from deployments.request.binding import parse
from deployments.settings.environment import load_app_settings
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings
from deployments.stages.in_process import InProcessStages
from deployments.workflows import provenance

logger = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edited", type=Path, help="an image this project made (PNG, JPEG or WebP)")
    parser.add_argument("--image", type=Path, action="append", required=True, help="the input image(s), in order")
    parser.add_argument("--mask", type=Path, default=None, help="the mask, if the record has one")
    parser.add_argument("--out", type=Path, required=True, help="where to write the image made again")
    parser.add_argument("--model", default=None, help="the checkpoint, if not where the record says (its id or directory)")
    parser.add_argument("--limits", type=Path, default=None, help="a Serve config file (its `limits`) or a YAML mapping of them")
    parser.add_argument("--adapters", type=Path, default=None, help="a Serve config file (its `lora`) or a YAML mapping of them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        edited = args.edited.read_bytes()
        record = metadata.read(edited)
        model = args.model or record["model"]
        ensure_generated(model)
        spec = resolve_model(model)
        lora = load_app_settings(args.adapters, "lora", LoraSettings).offering_checkpoint_adapters(spec.path)
        files = {"image": [path.read_bytes() for path in args.image], **({"mask": args.mask.read_bytes()} if args.mask else {})}
        request_model = spec.request_model(load_app_settings(args.limits, "limits", Limits), lora)
        again = _made_again(record, files, InProcessStages(model, lora), request_model, lora)
    except EditError as e:
        parser.exit(2, f"error: {e.message}\n")
    args.out.write_bytes(again.data)
    if again.data == edited:
        print(f"{args.out}: the same file as {args.edited}, byte for byte")
        return 0
    differs = {name: (was, now) for name, was in record["software"].items() if (now := provenance.software()[name]) != was}
    print(f"{args.out}: differs from {args.edited}" + (f"; other software versions (was, now): {differs}" if differs else ""))
    return 1


def _made_again(record: dict, files: dict, stages: InProcessStages, request_model, lora: LoraSettings):
    """The image `record` describes, from the original input `files`; a chain's earlier links first."""
    if "derived_from" in record:
        previous = _made_again(record["derived_from"], files, stages, request_model, lora)
        files, derived_from = {"image": [previous.data]}, previous.provenance
    else:
        derived_from = None
    _check_inputs(record, files)
    _check_adapters(record, lora)
    return stages.edit(parse(request_model, {**record["parameters"], **files}), derived_from)


def _check_inputs(record: dict, files: dict) -> None:
    """Refuses input files other than those the record was made from, naming the first that differs."""
    recorded = record["inputs_sha256"]
    if set(files) != set(recorded):
        raise InvalidInputError("mask", f"the record {'has' if 'mask' in recorded else 'has no'} mask; give --mask only with one")
    for name, hashes in recorded.items():
        given = [provenance.sha256(data) for data in files[name]] if name == "image" else provenance.sha256(files[name])
        if given != hashes:
            count = f" ({len(hashes)} in the record, {len(given)} given)" if name == "image" and len(given) != len(hashes) else ""
            raise InvalidInputError(name, f"is not the file the image was made from{count} (its SHA-256 differs from the record's)")


def _check_adapters(record: dict, lora: LoraSettings) -> None:
    for name, source in record["adapter_sources"].items():
        offered = lora.adapters.get(name)
        if offered is None or offered.source != source:
            raise InvalidInputError("lora", f"adapter {name!r} was {source}; give --adapters offering it (now: {offered and offered.source})")


if __name__ == "__main__":
    sys.exit(main())
