"""One edit in one process, through the same three stages the cluster runs:

    python -m deployments.edit IMAGE [IMAGE ...] --prompt "make the sky pink" --out edited.png

The parameter flags (--num-inference-steps, --true-cfg-scale, ...) are the model family's declared
request fields, validated as the HTTP API validates them. With no MODEL set this uses the tiny default
checkpoint (generated on first use), whose random weights produce noise: it shows the plumbing
works, not what a real model would draw.
"""

import argparse
import logging
import time
from pathlib import Path

from deployments.contracts import EditedImage, EditRequest
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.errors import EditError
from deployments.generated import ensure_generated
from deployments.lora_settings import LoraSettings
from deployments.models import resolve_model
from deployments.parameter_flags import add_parameter_flags, given
from deployments.parameters import EditParameters, parse
from deployments.settings import model_from_env

logger = logging.getLogger(__name__)
NOT_FLAGS = ("image", "prompt", "n", "output_format")  # positional, --prompt, one image, from --out's suffix


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
        values = {"seed": 0, **given(args, flags), "output_format": output_format}
        images = [path.read_bytes() for path in args.images]
        parameters = parse(spec.request_model(), {**values, "prompt": args.prompt, "image": images})
        edited = InProcessStages(model).edit(parameters)
    except EditError as e:
        parser.exit(2, f"error: {e.message}\n")
    args.out.write_bytes(edited.data)
    return 0


class InProcessStages:
    """The three stages in this process (`lora`: the adapters requests may name)."""

    def __init__(self, model: str, lora: LoraSettings = LoraSettings()):
        self.model = model
        self.encoder, self.denoiser, self.decoder = Encoder(model, lora=lora), Denoiser(model, lora=lora), Decoder(model)

    def edit(self, parameters: EditParameters, derived_from: dict | None = None) -> EditedImage:
        """One edit (`derived_from`: for a chain's later link, the provenance record of the image it edits)."""
        start = time.perf_counter()
        request = EditRequest(parameters, derived_from=derived_from)
        edited = self.decoder.decode(self.denoiser.denoise([self.encoder.encode(request)])[0])
        logger.info("made a %dx%d %s in %.2fs with %s", edited.width, edited.height, edited.format, time.perf_counter() - start, self.model)
        return edited


if __name__ == "__main__":
    raise SystemExit(main())
