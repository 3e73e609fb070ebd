"""One edit in one process, through the same three stages the cluster runs:

    python -m deployments.cli.edit IMAGE [IMAGE ...] --prompt "make the sky pink" --out edited.png

The parameter flags (--num-inference-steps, --true-cfg-scale, ...) are the model family's declared
request fields, validated as the HTTP API validates them. With no MODEL set this uses the tiny default
checkpoint (generated on first use), whose random weights produce noise: it shows the plumbing
works, not what a real model would draw.
"""

import argparse
import logging
from pathlib import Path

from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import resolve_model
from deployments.errors import EditError
from deployments.request.binding import parse
from deployments.request.flags import add_parameter_flags, given
from deployments.settings.environment import model_from_env
from deployments.stages.in_process import InProcessStages
from deployments.workflows.chains import chain_links, with_input

# positional, --prompt, one image, from --out's suffix; a guard judges images a server answers or retries (not here)
NOT_FLAGS = ("image", "prompt", "n", "output_format", "guard")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="input image(s); 1-3 for Edit-Plus models, else 1")
    parser.add_argument("--prompt", required=True, help="the edit instruction")
    parser.add_argument("--out", type=Path, required=True, help="where to write the edited image (.png, .jpg, .webp)")
    parser.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    flags = add_parameter_flags(parser.add_argument_group("request parameters"), NOT_FLAGS, {"seed": 0}, files=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = args.model or model_from_env()
    output_format = args.out.suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    try:
        ensure_generated(model)
        spec = resolve_model(model)
        images = [path.read_bytes() for path in args.images]
        values = {"seed": 0, **given(args, flags), "output_format": output_format, "prompt": args.prompt, "image": images}
        request_model = spec.request_model()
        first, *later = chain_links(request_model, parse(request_model, values), values)  # --chain: each link edits the last image
        stages = InProcessStages(model)
        edited = stages.edit(first, later_links=tuple(later))
        for link in later:
            edited = stages.edit(with_input(link, edited.data), derived_from=edited.provenance)
    except EditError as e:
        parser.exit(2, f"error: {e.message}\n")
    args.out.write_bytes(edited.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
