"""Time and peak memory of grafting an SD1.5 fine-tune onto the full-size FlashFace UNet.

Writes two SD1.5-size single-file checkpoints (the fine-tune and its base: the 686 SD1.5 UNet
tensors under ``model.diffusion_model.``, random, fp16, ~1.7 GB each) into a temporary folder, then
in a fresh subprocess builds the full-size FlashFace UNet in `--dtype` (zeros: the values do not
change the work) and grafts with `graft_unet`, reading one tensor pair at a time. Printed: seconds,
the process's peak resident memory above the UNet it started with (anonymous, and file-backed: the
mapped checkpoint pages), set beside the size of one SD1.5 UNet in fp32, which is what the ComfyUI
node keeps (the difference, as weight patches). The files are evicted from the page cache first
(a cold read) and deleted at the end.

    python bench/bench_graft.py [--dtype fp16] [--dim 320] [--keep-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.bench_load import evict_from_page_cache  # noqa: E402
from bench.memory import PeakMemory, resident  # noqa: E402
from flashface.models.convert import write_safetensors  # noqa: E402
from flashface.models.graft import graft_shapes, graft_unet  # noqa: E402
from flashface.models.ops import WEIGHT_DTYPES  # noqa: E402
from flashface.models.unet import FlashFaceUNet, UNetConfig  # noqa: E402

PREFIX = "model.diffusion_model."


def full_size_unet(config: UNetConfig, dtype: torch.dtype) -> FlashFaceUNet:
    """The UNet's tensors allocated (zeros) in `dtype` without a random initialization."""
    with torch.device("meta"):
        unet = FlashFaceUNet(config)
    unet = unet.to_empty(device="cpu").to(dtype)
    for tensor in unet.state_dict().values():
        tensor.zero_()
    return unet


def write_sd15_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    pattern = torch.randn(1 << 22, generator=torch.Generator().manual_seed(seed)).half() * 0.02

    def tensor(key: str, dtype: torch.dtype) -> torch.Tensor:
        shape = torch.Size(shapes[key[len(PREFIX) :]])
        repeats = -(-shape.numel() // len(pattern))
        return pattern.repeat(repeats)[: shape.numel()].view(shape).to(dtype)

    write_safetensors(path, [(PREFIX + key, torch.float16, shape) for key, shape in shapes.items()], tensor, {})


def child(folder: str, dtype: str, dim: int) -> None:
    unet = full_size_unet(UNetConfig(dim=dim), WEIGHT_DTYPES[dtype])
    start_anon, start_file = resident()
    with PeakMemory() as peak:
        began = time.perf_counter()
        changed = graft_unet(unet, Path(folder) / "fine_tune.safetensors", Path(folder) / "base.safetensors")
        seconds = time.perf_counter() - began
    print(f"RESULT {changed} {seconds:.2f} {peak.peak_anon - start_anon} {peak.peak_file - start_file}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dtype", choices=list(WEIGHT_DTYPES), default="fp16", help="the UNet's weight dtype")
    parser.add_argument("--dim", type=int, default=320, help="base width (320: FlashFace SD1.5)")
    parser.add_argument("--keep-dir", type=Path, help="write the checkpoints here and keep them")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "DTYPE", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    folder = args.keep_dir or Path(tempfile.mkdtemp(prefix="flashface-graft-bench-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with torch.device("meta"):
            shapes = graft_shapes(FlashFaceUNet(UNetConfig(dim=args.dim)))
        sd15_fp32 = sum(torch.Size(shape).numel() for shape in shapes.values()) * 4
        for seed, name in enumerate(("fine_tune", "base")):
            path = folder / f"{name}.safetensors"
            if not path.exists():
                write_sd15_checkpoint(path, shapes, seed)
            evict_from_page_cache(str(path))
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", str(folder), args.dtype, str(args.dim)],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
        changed, seconds, anon, file_backed = line.split()[1:]
        size = (folder / "fine_tune.safetensors").stat().st_size
        print(f"graft of two SD1.5 checkpoints ({size / 2**30:.2f} GiB each, fp16)")
        print(f"  onto the UNet in {args.dtype}, dim {args.dim}")
        print(f"  tensors grafted            {changed}")
        print(f"  seconds (cold read)        {float(seconds):.1f}")
        print(f"  peak anonymous above UNet  {int(anon) / 2**20:.0f} MiB")
        print(f"  peak file-backed (mapped)  {int(file_backed) / 2**20:.0f} MiB")
        print(f"  one SD1.5 UNet in fp32     {sd15_fp32 / 2**20:.0f} MiB (what the ComfyUI node keeps as patches)")
    finally:
        if args.keep_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
