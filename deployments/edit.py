"""One edit in one process, through the same three stages the cluster runs:

    python -m deployments.edit IMAGE [IMAGE ...] --prompt "make the sky pink" --out edited.png

With no MODEL set this uses the tiny default checkpoint (generated on first use), whose random
weights produce noise: it shows the plumbing works, not what a real model would draw.
"""

import argparse
import logging
import time
from pathlib import Path

from deployments.contracts import EditRequest, OutputSpec
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.errors import EditError
from deployments.models import resolve_model
from deployments.parameters import PARAMETERS
from deployments.settings import model_from_env

logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="input image(s); 1-3 for Edit-Plus models, else 1")
    parser.add_argument("--prompt", required=True, help="the edit instruction")
    parser.add_argument("--negative-prompt", default=None,
                        help="default: the family's (' ' for Qwen-Image-Edit, as its examples; none for InstructPix2Pix)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="Qwen-Image-Edit: true CFG scale (4.0); <= 1 turns CFG off")
    parser.add_argument("--guidance-scale", type=float, default=None, help="InstructPix2Pix: text guidance s_T (7.5)")
    parser.add_argument("--image-guidance-scale", type=float, default=None, help="InstructPix2Pix: image guidance s_I (1.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where to write the edited image")
    parser.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = args.model or model_from_env()
    output_format = args.out.suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    try:
        parameters = PARAMETERS[resolve_model(model).pipeline_class]
        request = EditRequest(
            images=tuple(path.read_bytes() for path in args.images),
            prompt=args.prompt,
            negative_prompt=parameters.default_negative_prompt if args.negative_prompt is None else args.negative_prompt,
            seed=args.seed,
            num_inference_steps=args.steps,
            true_cfg_scale=args.cfg,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            output=OutputSpec(format=output_format),
        )
        encoder, denoiser, decoder = Encoder(model), Denoiser(model), Decoder(model)
        start = time.perf_counter()
        edited = decoder.decode(denoiser.denoise([encoder.encode(request)])[0])
    except EditError as e:
        parser.exit(2, f"error: {e.message}\n")
    args.out.write_bytes(edited.data)
    logger.info("wrote %s (%dx%d %s) in %.2fs with %s", args.out, edited.width, edited.height, edited.format,
                time.perf_counter() - start, model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
