"""Seconds per FlashFace UNet call (one sampling step's model evaluation) on this machine.

A call = the reference pass (`encode_references`) plus the main pass (`forward`) on all branch
rows: 2 branches [cond | uncond] with weight λ on every row, or 3 branches
[cond+ref | cond | uncond] with weights [λ, 0, 0]. Each optimization is switched off in turn:

  skip_unweighted_rows     (a) rows with weight 0 get SA1(y) only
  project_references_once  (b) reference k/v projected through SA1 once per call, not per row
  fused_attention          (c) scaled_dot_product_attention instead of explicit softmax
  shared_reference_pass    (d) one reference pass per call; off = one pass and one model call
                               per branch, as a per-branch guidance loop would do

Weights are random (fan-in scaled uniform, generated in memory), fp32 unless --dtype is given.
Peak resident memory (anonymous and file-backed) is sampled from /proc during each measurement
(process total, model included).

    python bench/bench_sampling_step.py                 # SD1.5 size: 512 px, 4 references, batch 1
    python bench/bench_sampling_step.py --dim 64 --size 256 --repeats 2   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields, replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flashface.models.unet import UNetConfig, UNetSpeedOptions  # noqa: E402
from bench.memory import PeakMemory, rss  # noqa: E402
from bench.workload import random_unet  # noqa: E402

def model_call(model, inputs, branches: int, shared_reference_pass: bool) -> torch.Tensor:
    blocks = 1 if shared_reference_pass else branches
    rows = inputs["x"].shape[0] // blocks
    outputs = []
    for b in range(blocks):
        part = slice(b * rows, (b + 1) * rows)
        references = model.encode_references(inputs["reference_latents"], inputs["t"][0], inputs["reference_context"])
        outputs.append(model(inputs["x"][part], inputs["t"][part], inputs["context"][part], inputs["mask"][part],
                             references, inputs["reference_weights"][part]))
    return torch.cat(outputs)


def make_inputs(config, branches, batch, size, references, reference_size, weight, generator):
    rows = branches * batch
    latent, ref_latent = size // 8, reference_size // 8
    reference_weights = [weight] * batch + [0.0] * (rows - batch) if branches == 3 else [weight] * rows
    mask = torch.zeros(rows, latent, latent)
    mask[:, latent // 5: latent // 2, latent // 4: latent // 2 + latent // 4] = 1
    return dict(
        x=torch.randn(rows, 4, latent, latent, generator=generator),
        t=torch.full((rows,), 500),
        context=torch.randn(rows, 77, config.context_dim, generator=generator),
        mask=mask,
        reference_latents=torch.randn(references, 4, ref_latent, ref_latent, generator=generator),
        reference_context=torch.randn(references, 77, config.context_dim, generator=generator),
        reference_weights=torch.tensor(reference_weights),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="output image side in pixels (latent = size/8)")
    parser.add_argument("--dim", type=int, default=320, help="UNet base width (320 = SD1.5)")
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--reference-size", type=int, default=224, help="reference crop side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="samples per call (rows = branches x batch)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per variant (after one warm-up)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--weight", type=float, default=1.2, help="reference_weights weight λ")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    config = UNetConfig(dim=args.dim)
    start = time.perf_counter()
    model = random_unet(config, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e9:.3f} G parameters ({args.dtype}), built in {time.perf_counter() - start:.1f} s, "
          f"RSS {rss() / 2**30:.2f} GiB; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"call: {args.size}x{args.size} px (latent {args.size // 8}), {args.references} references of "
          f"{args.reference_size} px (latent {args.reference_size // 8}), batch {args.batch}, λ={args.weight}")

    switches = [f.name for f in fields(UNetSpeedOptions)] + ["shared_reference_pass"]
    variants = [("all optimizations on", None)] + [(f"{name} off", name) for name in switches]
    generator = torch.Generator().manual_seed(0)
    print(f"{'branches':>8}  {'variant':<32} {'s/call':>8} {'x all-on':>8}  peak memory")
    for branches in (2, 3):
        inputs = make_inputs(config, branches, args.batch, args.size, args.references, args.reference_size,
                             args.weight, generator)
        model_call(model, inputs, branches, True)  # warm-up
        baseline = None
        for label, off in variants:
            model.speed = replace(UNetSpeedOptions(), **({off: False} if off in UNetSpeedOptions.__dataclass_fields__
                                                        else {}))
            times = []
            with PeakMemory() as peak:
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model_call(model, inputs, branches, off != "shared_reference_pass")
                    times.append(time.perf_counter() - start)
            seconds = sum(times) / len(times)
            baseline = baseline or seconds
            print(f"{branches:>8}  {label:<32} {seconds:8.2f} {seconds / baseline:8.2f}  {peak}",
                  flush=True)
    model.speed = UNetSpeedOptions()


if __name__ == "__main__":
    main()
