"""How far one FlashFace UNet call is from this machine's arithmetic limit on the CPU.

Measures, in one process with the same threads:

* the fp32 matrix-multiply peak: the best GFLOP/s of square `torch.mm` products (sizes 1024-4096);
* one UNet call as a sampling step makes it (reference pass + main pass, 3 branches: the step
  after launch, the most expensive; 4 distinct references, batch 1, random full-size weights),
  its floating-point operations counted by `torch.utils.flop_counter.FlopCounterMode` (matrix
  multiplies, convolutions and attention; norms and elementwise work are not counted) and its
  best time over --repeats calls;

and prints the achieved GFLOP/s of the call next to the peak, and their ratio. A ratio near 1
means the CPU path is bound by arithmetic and little speed is left without doing less work.

    python bench/bench_compute_bound.py                    # SD1.5 size, 512 px (about 7 GB of RAM)
    python bench/bench_compute_bound.py --dim 64 --size 256 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.workload import StepInputs, random_unet, unet_call  # noqa: E402
from flashface.models.unet import UNetConfig  # noqa: E402
from flashface.settings import default  # noqa: E402

LAUNCHED_TIMESTEP = 500  # after the default launch (750): three branches


def matmul_peak(sizes=(1024, 2048, 4096), repeats: int = 3) -> tuple[float, int]:
    """The best fp32 GFLOP/s of `torch.mm` over `sizes`, and the size that gave it."""
    best, best_size = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            rate = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if rate > best:
                best, best_size = rate, n
    return best, best_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=320, help="UNet base width (320: SD1.5)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (after one warm-up)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    threads = torch.get_num_threads()
    peak, peak_size = matmul_peak()
    print(
        f"torch {torch.__version__}, {threads} threads; fp32 matmul peak {peak:.1f} GFLOP/s ({peak_size}^3)", flush=True
    )

    config = UNetConfig(dim=args.dim, context_dim=768 if args.dim == 320 else 64)
    model = random_unet(config, torch.float32)
    inputs = StepInputs(args.size, 4, 4, 1, config.context_dim)
    strength = default("reference_feature_strength")
    with FlopCounterMode(display=False) as counter:
        unet_call(model, inputs, 3, LAUNCHED_TIMESTEP, strength)
    flops = counter.get_total_flops()
    unet_call(model, inputs, 3, LAUNCHED_TIMESTEP, strength)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        unet_call(model, inputs, 3, LAUNCHED_TIMESTEP, strength)
        seconds.append(time.perf_counter() - start)
    achieved = flops / min(seconds) / 1e9
    print(
        f"one 3-branch UNet call at {args.size} px, 4 references, batch 1 (width {args.dim}): "
        f"{flops / 1e9:.0f} GFLOP counted, best {min(seconds):.2f} s of {len(seconds)} "
        f"[{min(seconds):.2f}-{max(seconds):.2f}] -> {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the matmul peak",
        flush=True,
    )


if __name__ == "__main__":
    main()
