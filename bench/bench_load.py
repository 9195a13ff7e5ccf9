"""Load time and peak memory of `load_unet` versus a naive load, on a full-size UNet file.

Writes a random checkpoint in the published `flashface.ckpt` layout (2142 keys, every alias
stored separately, `ref_middle` included, fp32, ~10.5 GB) as .safetensors and as a torch.save
pickle into a temporary folder under /tmp, then measures in a fresh subprocess each:

  load_unet fp32 / fp16   our loader (lazy/mmap read, each alias pair compared and kept once,
                          ref_middle never read)
  naive                   the official way: build the full model (ref_middle included,
                          default random init), read every tensor (torch.load without mmap /
                          safetensors load_file),
                          load_state_dict(strict=True)
  convert fp16 / fp8      `python -m flashface convert` of the .safetensors file (tensor by tensor),
                          then the compact files loaded by load_unet in their dtype

The file is evicted from the page cache before each run (cold read). Peak RSS is the kernel's
high-water mark VmHWM of the child (anonymous memory plus resident file pages of memory-mapped
files; not ru_maxrss, which a child inherits from the parent that wrote the files); peak anon is the
anonymous part alone, sampled from /proc. The folder is deleted at the end.

    python bench/bench_load.py [--dim 320] [--keep-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from safetensors.torch import load_file  # noqa: E402

from bench.memory import PeakMemory, peak_rss  # noqa: E402
from flashface.models.convert import convert_unet, write_safetensors  # noqa: E402
from flashface.models.ops import TORCH_OPERATIONS, WEIGHT_DTYPES  # noqa: E402
from flashface.models.unet import FlashFaceUNet, UNetConfig, build_middle_block  # noqa: E402
from flashface.models.unet_loading import (  # noqa: E402
    checkpoint_plan,
    load_unet,
    unused_middle_file_key,
)
from tiny_unet import checkpoint_key_shapes  # noqa: E402

PATTERN_VALUES = 1 << 24  # 64 MiB of fp32 values, repeated to fill every tensor


def _pattern_of(pattern: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The start of the pattern, repeated as often as a tensor of `shape` needs."""
    repeats = -(-shape.numel() // len(pattern))
    return (pattern.repeat(repeats) if repeats > 1 else pattern)[: shape.numel()].view(shape)


def write_published_layout(path: str, shapes: dict, metadata: dict) -> None:
    """Stream the file tensor by tensor (the library's writer); each tensor is the start of one
    fixed random pattern (repeated for the largest), so aliased tensors (same shape) are
    byte-identical, as in the real file."""
    pattern = torch.randn(PATTERN_VALUES, generator=torch.Generator().manual_seed(0)) * 0.02
    write_safetensors(
        Path(path),
        [(key, torch.float32, tuple(shape)) for key, shape in shapes.items()],
        lambda key, dtype: _pattern_of(pattern, shapes[key]),
        metadata,
    )


def write_pickle_from(safetensors_path: str, path: str) -> None:
    """torch.save the same tensors, each with its own storage, read through a private mmap."""
    with open(safetensors_path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    header.pop("__metadata__")
    start = 8 + header_len
    tensors = {
        key: torch.frombuffer(mapped, dtype=torch.float32, count=(end - begin) // 4, offset=start + begin).view(
            info["shape"]
        )
        for key, info in header.items()
        for begin, end in [info["data_offsets"]]
    }
    torch.save(tensors, path)
    del tensors
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def evict_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def naive_load(path: str, config: UNetConfig) -> torch.nn.Module:
    """What the official code does: the whole file in RAM, then the full model (`ref_middle`
    included) filled from it."""
    model = FlashFaceUNet(config)
    ref_middle = build_middle_block(TORCH_OPERATIONS, config, reads_references=False)
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    plan = checkpoint_plan(config)
    model.load_state_dict(
        {key: tensor_plan.combine([state[k] for k in tensor_plan.file_keys]) for key, tensor_plan in plan.items()},
        strict=True,
    )
    ref_middle.load_state_dict(
        {key: state[unused_middle_file_key(key)] for key in ref_middle.state_dict()}, strict=True
    )
    model.ref_middle = ref_middle
    return model


def child(method: str, path: str, dtype: str, dim: str) -> None:
    torch.set_grad_enabled(False)
    with PeakMemory() as memory:
        start = time.perf_counter()
        if method == "naive":
            model = naive_load(path, UNetConfig(dim=int(dim)))
        elif method == "convert":  # path -> path.<dtype>.safetensors
            model = load_unet(convert_unet(path, compact_path(path, dtype), WEIGHT_DTYPES[dtype]), device="meta")
        else:
            model = load_unet(path, dtype=WEIGHT_DTYPES[dtype])
        seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    peak = max(peak_rss(), memory.peak)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss": peak,
                "peak_anon": memory.peak_anon,
                "peak_file": memory.peak_file,
                "parameters": params,
            }
        )
    )


def compact_path(path: str, dtype: str) -> str:
    return f"{os.path.splitext(path)[0]}.{dtype}.safetensors"


def measure(method: str, path: str, dtype: str, dim: int) -> dict:
    evict_from_page_cache(path)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", method, path, dtype, str(dim)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"{method} {path} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=320, help="UNet base width (320 = SD1.5 / flashface.ckpt)")
    parser.add_argument("--keep-dir", help="write the files here and keep them (default: temp dir, deleted)")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "PATH", "DTYPE", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    folder = args.keep_dir or tempfile.mkdtemp(prefix="flashface-bench-load-", dir="/tmp")
    os.makedirs(folder, exist_ok=True)
    try:
        shapes = checkpoint_key_shapes(UNetConfig(dim=args.dim))
        safetensors_path = os.path.join(folder, "flashface.safetensors")
        pickle_path = os.path.join(folder, "flashface.ckpt")
        start = time.perf_counter()
        write_published_layout(safetensors_path, shapes, {"num_heads": "8"})
        write_pickle_from(safetensors_path, pickle_path)
        print(
            f"wrote {len(shapes)} keys: {os.path.getsize(safetensors_path) / 1e9:.2f} GB .safetensors, "
            f"{os.path.getsize(pickle_path) / 1e9:.2f} GB .ckpt in {time.perf_counter() - start:.0f} s; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; cold page cache per run"
        )
        print(
            f"{'file':<24} {'method':<20} {'seconds':>8} {'peak RSS GiB':>13} {'peak anon GiB':>14} "
            f"{'file-backed':>12} {'params G':>9}"
        )
        runs = [
            (path, method, dtype)
            for path in (safetensors_path, pickle_path)
            for method, dtype in (("load_unet", "fp32"), ("load_unet", "fp16"), ("naive", "fp32"))
        ]
        runs += [
            (safetensors_path, "convert", "fp16"),
            (safetensors_path, "convert", "fp8_e4m3fn"),
            (compact_path(safetensors_path, "fp16"), "load_unet", "fp16"),
            (compact_path(safetensors_path, "fp8_e4m3fn"), "load_unet", "fp8_e4m3fn"),
        ]
        for path, method, dtype in runs:
            r = measure(method, path, dtype, args.dim)
            name = os.path.basename(path).replace("flashface", "")
            print(
                f"{name:<24} {method + ' ' + dtype:<20} {r['seconds']:8.1f} {r['peak_rss'] / 2**30:13.2f} "
                f"{r['peak_anon'] / 2**30:14.2f} {r['peak_file'] / 2**30:12.2f} {r['parameters'] / 1e9:9.3f}",
                flush=True,
            )
        for dtype in ("fp16", "fp8_e4m3fn"):
            print(f"compact {dtype}: {os.path.getsize(compact_path(safetensors_path, dtype)) / 1e9:.2f} GB")
    finally:
        if not args.keep_dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
