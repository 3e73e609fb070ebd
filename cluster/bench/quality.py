"""What a quality report (deployments/workflows/quality.py) costs the Decoder, against what it already spends
encoding the same image as PNG, side by side in one run:

    python -m cluster.bench.quality [--size 1024] [--runs 7]

Two random SIZExSIZE images (the worst case for PNG; the report's cost does not depend on content).
"""

import argparse
import statistics
import time

import numpy as np
import torch

from deployments.contracts import Reference
from deployments.media.images import OutputSpec, encode_image
from deployments.workflows.quality import quality_report


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    before, after = (rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(2))
    reference = Reference(torch.from_numpy(before), None, (args.size, args.size))
    for name, fn in (("quality report", lambda: quality_report(torch.from_numpy(after), reference)),
                     ("PNG encode", lambda: encode_image(after, OutputSpec()))):
        seconds = timed(fn, args.runs)
        print(f"{name:>15}: median {statistics.median(seconds) * 1000:6.0f} ms, min {min(seconds) * 1000:6.0f}, "
              f"max {max(seconds) * 1000:6.0f} ({args.runs} runs, {args.size}x{args.size}, {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
