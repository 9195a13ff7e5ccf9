"""Seconds per FlashFace UNet call (one sampling step's model evaluation) on this machine.

A call = the reference pass (`encode_references`) plus the main pass (`forward`) on all branch
rows: 2 branches [cond | uncond] with weight λ on every row, or 3 branches
[cond+ref | cond | uncond] with weights [λ, 0, 0]. The call as the sampler makes it is timed
against the same call with one saving taken away at a time:

  rows not shared        every row computed on its own (a plan that says nothing is shared)
  every reference copy   the padded references each through the reference pass and attended to
  a call per branch      one reference pass and one model call per branch
  straightforward        tests/straightforward_unet.py: all of the above, both reference-attention
                         terms for every row, reference projections per row, explicit softmax

Weights are random (fan-in scaled uniform, generated in memory), fp32 unless --dtype is given.
Peak resident memory (anonymous and file-backed) is sampled from /proc during each measurement
(process total, model included).

    python bench/bench_sampling_step.py                 # SD1.5 size: 512 px, 2 photos padded to 4
    python bench/bench_sampling_step.py --dim 64 --size 256 --repeats 2   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from bench.memory import PeakMemory, rss  # noqa: E402
from bench.workload import StepInputs, random_unet  # noqa: E402
from flashface.models.row_plan import RowPlan  # noqa: E402
from flashface.models.unet import UNetConfig  # noqa: E402
from flashface.sampling.guidance import branch_chunks, row_plan  # noqa: E402
from flashface.settings import GenerationSettings  # noqa: E402
from straightforward_unet import straightforward_eps  # noqa: E402

VARIANTS = ("as sampled", "rows not shared", "every reference copy", "a call per branch", "straightforward")


def model_call(model, inputs: StepInputs, branches: int, weight: float, variant: str) -> torch.Tensor:
    settings = GenerationSettings(reference_feature_strength=weight, reference_feature_strength_before_launch=weight)
    timestep = 999 if branches == 2 else 0  # a layout of `branches` rows per sample
    plan = row_plan(settings, timestep, branch_chunks(settings, timestep), inputs.batch)
    rows, faces = branches * inputs.batch, len(inputs.faces)
    x, t = inputs.latent.repeat(branches, 1, 1, 1), torch.full((rows,), 500)
    context, mask = inputs.contexts(branches), inputs.mask.repeat(branches, 1, 1)
    if variant == "straightforward":
        return straightforward_eps(
            model, x, t, context, mask, inputs.references, inputs.reference_context, plan.weights
        )
    if variant == "a call per branch":
        outputs = []
        for branch in range(branches):
            part = slice(branch * inputs.batch, (branch + 1) * inputs.batch)
            features = model.encode_references(
                inputs.faces, 500, inputs.reference_context[:faces], copies=inputs.copies
            )
            outputs.append(
                model(x[part], t[part], context[part], mask[part], features, RowPlan.unshared(plan.weights[part]))
            )
        return torch.cat(outputs)
    if variant == "every reference copy":
        features = model.encode_references(inputs.references, 500, inputs.reference_context)
    else:
        features = model.encode_references(inputs.faces, 500, inputs.reference_context[:faces], copies=inputs.copies)
    return model(
        x, t, context, mask, features, RowPlan.unshared(plan.weights) if variant == "rows not shared" else plan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="output image side in pixels (latent = size/8)")
    parser.add_argument("--dim", type=int, default=320, help="UNet base width (320 = SD1.5)")
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--photos", type=int, default=2, help="distinct faces among the references")
    parser.add_argument("--reference-size", type=int, default=224, help="reference crop side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="samples per call (rows = branches x batch)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per variant (after one warm-up)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--weight", type=float, default=1.2, help="reference weight λ")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    config = UNetConfig(dim=args.dim)
    start = time.perf_counter()
    model = random_unet(config, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {params / 1e9:.3f} G parameters ({args.dtype}), built in {time.perf_counter() - start:.1f} s, "
        f"RSS {rss() / 2**30:.2f} GiB; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"call: {args.size}x{args.size} px (latent {args.size // 8}), {args.references} references of "
        f"{args.photos} photo(s) at {args.reference_size} px, batch {args.batch}, λ={args.weight}"
    )
    inputs = StepInputs(args.size, args.references, args.photos, args.batch, config.context_dim, args.reference_size)
    print(f"{'branches':>8}  {'variant':<24} {'s/call':>8} {'x sampled':>9}  peak memory")
    for branches in (2, 3):
        model_call(model, inputs, branches, args.weight, VARIANTS[0])  # warm-up
        baseline = None
        for variant in VARIANTS:
            times = []
            with PeakMemory() as peak:
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model_call(model, inputs, branches, args.weight, variant)
                    times.append(time.perf_counter() - start)
            seconds = sum(times) / len(times)
            baseline = baseline or seconds
            print(f"{branches:>8}  {variant:<24} {seconds:8.2f} {seconds / baseline:9.2f}  {peak}", flush=True)


if __name__ == "__main__":
    main()
