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
from deployments.settings import model_from_env

logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="input image(s); 1-3 for Edit-Plus models")
    parser.add_argument("--prompt", required=True, help="the edit instruction")
    parser.add_argument("--negative-prompt", default=" ", help="true CFG negative prompt (default ' ', as Qwen's examples)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=4.0, help="true CFG scale; <= 1 turns CFG off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where to write the edited image")
    parser.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = args.model or model_from_env()
    output_format = args.out.suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    try:
        request = EditRequest(
            images=tuple(path.read_bytes() for path in args.images),
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            num_inference_steps=args.steps,
            true_cfg_scale=args.cfg,
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
