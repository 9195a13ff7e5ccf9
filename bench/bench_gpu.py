"""FlashFace UNet on a GPU, random full-size weights: one command, a few minutes.

    python bench/bench_gpu.py                              # CUDA, SD1.5 size
    python bench/bench_gpu.py --comfyui /path/to/ComfyUI   # + the UNet partially loaded by ComfyUI
    python bench/bench_gpu.py --tiny --device cpu          # the same code at a tiny size (a test runs this)
    python bench/bench_gpu.py --device cpu --deviation-only  # full-size deviations from fp32 on a CPU

Prints
* seconds per sampling step (one model call: reference pass + main pass) for 2 and 3 branches,
  512 and 768 px, batch 1 and 4, fp16, bf16 and fp8 weights (fp8: computing in fp16), 4 distinct
  references, and two people of 4 references each side by side (batch 1; experimental), with the peak
  device memory of each (CUDA: peak allocated by torch; CPU: peak resident memory, anonymous and
  file-backed);
* the graft of an SD1.5-size fine-tune (random fp16 files) onto the fp16 UNet on the device: seconds and
  peak memory, then the step on the grafted UNet (512 px, batch 1, 3 branches);
* with --comfyui: the same step (512 px, batch 1, fp16) with the UNet loaded through ComfyUI's
  ModelPatcher into a budget of --budget of its size, as ComfyUI's model management does on a
  small GPU or with --lowvram: the rest stays on the CPU and is cast per layer at each call;
* the deviation of one fp16, bf16, fp8_e4m3fn and fp8_e5m2 call from the fp32 call with the same weights and inputs
  (fp32 computed on the device if it fits, else on the CPU);
* whether ``noise="device"`` gives the same latent noise as ``torch.manual_seed(seed)`` followed by
  ``torch.empty(..., device=device).normal_()`` (what the official code does on CUDA).

``--json PATH`` also writes every figure as JSON (what `tests/slow/test_bench_gpu.py` reads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from bench.workload import StepInputs, random_unet, synchronize, unet_call  # noqa: E402
from flashface.models.ops import (  # noqa: E402
    CASTING_OPERATIONS,
    STORAGE_ONLY_DTYPES,
    WEIGHT_DTYPES,
    compute_dtype_for,
)
from flashface.models.unet import FlashFaceUNet, UNetConfig  # noqa: E402
from flashface.pipeline import initial_noise  # noqa: E402
from flashface.settings import default  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """The UNet, image sizes and reference size one run measures."""

    config: UNetConfig
    sizes: tuple[int, int]
    reference_size: int


FULL = Scale(UNetConfig(), (512, 768), 224)
TINY = Scale(UNetConfig(dim=32, num_heads=2, context_dim=64), (64, 96), 64)
DTYPES = {name: WEIGHT_DTYPES[name] for name in ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")}
TIMESTEP = {2: 900, 3: 500}  # a step before and after the default launch timestep (750)
# the official reference strengths before and after launch
STRENGTH = {2: default("reference_feature_strength_before_launch"), 3: default("reference_feature_strength")}


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict that holds, after the block, its peak memory: "peak_gib" (CUDA: allocated by
    torch; else resident) and "text", its description."""
    report: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield report
        report["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report["text"] = f"peak VRAM {report['peak_gib']:.2f} GiB"
    else:
        with PeakMemory() as memory:
            yield report
        report["peak_gib"], report["text"] = memory.peak / 2**30, str(memory)


def timing(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def on_device(source: FlashFaceUNet, dtype: torch.dtype, device: torch.device, operations=None) -> FlashFaceUNet:
    """A copy of `source` on `device` with weights in `dtype` (norms stay fp32), copied tensor by
    tensor so the device never holds more than the copy; fp8 weights compute in the device's
    compute dtype through casting layers, as `load_unet` loads them."""
    storage_only = dtype in STORAGE_ONLY_DTYPES
    with torch.device("meta"):
        model = FlashFaceUNet(source.config, operations or (CASTING_OPERATIONS if storage_only else None))
    if storage_only:
        model.manual_cast_dtype = compute_dtype_for(device)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    sources = dict(source.named_modules())
    for name, module in model.named_modules():
        for key, _ in list(module.named_parameters(recurse=False)):
            value = getattr(sources[name], key).detach()
            value = value.to(device, torch.float32 if isinstance(module, norms) else dtype, copy=True)
            setattr(module, key, torch.nn.Parameter(value, requires_grad=False))
    return model.eval()


def time_calls(model, inputs: StepInputs, branches: int, repeats: int, device: torch.device) -> list[float]:
    unet_call(model, inputs, branches, TIMESTEP[branches], STRENGTH[branches])  # warm-up
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        unet_call(model, inputs, branches, TIMESTEP[branches], STRENGTH[branches])
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def step_table(source, sizes, batches, dtypes, repeats, reference_size, device) -> list[dict]:
    print(
        f"{'dtype':<11}{'px':>5}{'batch':>6}{'people':>7}{'branches':>9}{'s/step':>9}  range          memory",
        flush=True,
    )
    rows = []
    for dtype_name in dtypes:
        model = on_device(source, DTYPES[dtype_name], device)
        for size in sizes:
            for batch, people in [(batch, 1) for batch in batches] + [(batches[0], 2)]:
                inputs = StepInputs(size, 4, 4, batch, source.config.context_dim, reference_size, device, people=people)
                for branches in (2, 3):
                    row = f"{dtype_name:<11}{size:>5}{batch:>6}{people:>7}{branches:>9}"
                    figures = dict(dtype=dtype_name, px=size, batch=batch, people=people, branches=branches)
                    try:
                        with peak_memory(device) as memory:
                            seconds = time_calls(model, inputs, branches, repeats, device)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                        if not out_of_memory(error):
                            raise
                        print(f"{row}  out of memory", flush=True)
                        rows.append({**figures, "out_of_memory": True})
                        torch.cuda.empty_cache() if device.type == "cuda" else None
                        continue
                    step = timing(seconds)
                    rows.append({**figures, "seconds": step, "peak_gib": memory["peak_gib"]})
                    print(
                        f"{row}{step['median']:9.3f}  [{step['min']:.3f}-{step['max']:.3f}]  {memory['text']}",
                        flush=True,
                    )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def grafted_step(source, size: int, repeats: int, reference_size: int, device: torch.device) -> dict:
    """An SD1.5-size fine-tune and base (random, fp16 files in a temporary folder) grafted onto the
    fp16 UNet on the device (`graft_unet`), then the step timed on the grafted UNet."""
    from bench.bench_graft import write_sd15_checkpoint
    from flashface.models.graft import graft_shapes, graft_unet

    model = on_device(source, torch.float16, device)
    with tempfile.TemporaryDirectory(prefix="flashface-graft-") as folder:
        files = [Path(folder) / f"{name}.safetensors" for name in ("fine_tune", "base")]
        for seed, path in enumerate(files):
            write_sd15_checkpoint(path, graft_shapes(model), seed)
        with peak_memory(device) as memory:
            start = time.perf_counter()
            changed = graft_unet(model, files[0], files[1])
            synchronize(device)
            seconds = time.perf_counter() - start
    print(
        f"graft of an SD1.5 fine-tune onto the fp16 UNet: {changed} tensors, {seconds:.1f} s, {memory['text']}",
        flush=True,
    )
    inputs = StepInputs(size, 4, 4, 1, source.config.context_dim, reference_size, device)
    step = timing(time_calls(model, inputs, 3, repeats, device))
    print(f"  grafted fp16 {size} px batch 1, 3 branches: {step['median']:.3f} s/step", flush=True)
    return {"tensors": changed, "seconds": seconds, "peak_gib": memory["peak_gib"], "step": {"px": size, **step}}


def import_comfyui(tree: str, device: torch.device):
    """ComfyUI's model management and ModelPatcher from a ComfyUI source tree."""
    sys.path.insert(0, os.path.abspath(tree))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device.type == "cpu"
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops

    return comfy


def partial_load(
    source, tree: str, budget: float, size: int, repeats: int, reference_size: int, device: torch.device
) -> dict:
    comfy = import_comfyui(tree, device)
    unet = on_device(source, torch.float16, torch.device("cpu"), operations=comfy.ops.disable_weight_init)
    size_bytes = comfy.model_management.module_size(unet)
    patcher = comfy.model_patcher.ModelPatcher(
        unet, load_device=device, offload_device=torch.device("cpu"), size=size_bytes
    )
    with peak_memory(device) as load_memory:
        patcher.load(device, lowvram_model_memory=int(size_bytes * budget))
    resident = cast = 0
    for module in unet.modules():
        own = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
        if getattr(module, "comfy_cast_weights", False):
            cast += own
        else:
            resident += own
    print(
        f"ComfyUI ModelPatcher, budget {budget:.0%} of {size_bytes / 2**30:.3f} GiB: weights loaded to "
        f"{device.type} {resident / 2**30:.3f} GiB, cast per layer at each call {cast / 2**30:.3f} GiB; "
        f"load {load_memory['text']}",
        flush=True,
    )
    inputs = StepInputs(size, 4, 4, 1, source.config.context_dim, reference_size, device)
    steps = []
    for branches in (2, 3):
        with peak_memory(device) as memory:
            step = timing(time_calls(unet, inputs, branches, repeats, device))
        steps.append({"px": size, "branches": branches, "seconds": step, "peak_gib": memory["peak_gib"]})
        print(
            f"  fp16 {size} px batch 1, {branches} branches: {step['median']:.3f} s/step "
            f"[{step['min']:.3f}-{step['max']:.3f}], {memory['text']}",
            flush=True,
        )
    patcher.detach() if hasattr(patcher, "detach") else patcher.unpatch_model(torch.device("cpu"))
    gib = 2**30
    return {
        "budget": budget,
        "model_gib": size_bytes / gib,
        "resident_gib": resident / gib,
        "cast_gib": cast / gib,
        "steps": steps,
    }


def deviation(source, dtypes, size: int, reference_size: int, device: torch.device) -> dict:
    inputs_on = {}

    def call(model, where):
        if where not in inputs_on:
            inputs_on[where] = StepInputs(size, 4, 4, 1, source.config.context_dim, reference_size, where)
        return unet_call(model, inputs_on[where], 3, TIMESTEP[3], STRENGTH[3]).float().cpu()

    try:
        exact, where = call(on_device(source, torch.float32, device), device), device.type
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        if not out_of_memory(error):
            raise
        torch.cuda.empty_cache() if device.type == "cuda" else None
        exact, where = call(source, torch.device("cpu")), "cpu"
    deviations = {}
    for dtype_name in dtypes:
        low = call(on_device(source, DTYPES[dtype_name], device), device)
        difference = (low - exact).abs()
        found = deviations[dtype_name] = {
            "fp32_on": where,
            "max": float(difference.max()),
            "mean": float(difference.mean()),
            "output_std": float(exact.std()),
            "max_relative_to_std": float(difference.max() / exact.std()),
        }
        print(
            f"{dtype_name} vs fp32 (fp32 on {where}), one 3-branch call at {size} px: max |diff| "
            f"{found['max']:.3e}, mean {found['mean']:.3e}, output std {found['output_std']:.3f}, "
            f"max relative to std {found['max_relative_to_std']:.3e}",
            flush=True,
        )
    return deviations


def noise_check(device: torch.device, seed: int = 1234, shape=(2, 4, 64, 64)) -> bool:
    ours, _ = initial_noise(shape, seed, device, "device")
    torch.manual_seed(seed)
    official = torch.empty(shape, device=device).normal_()
    same = torch.equal(ours, official)
    print(f'noise="device" equals torch.manual_seed({seed}) then {device.type} normal_(): {same}', flush=True)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet and tiny images (for CPU checks)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (after one warm-up)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--comfyui", help="a ComfyUI source tree: also time the UNet partially loaded by it")
    parser.add_argument("--budget", type=float, default=0.5, help="part of the UNet ComfyUI may load (0-1)")
    parser.add_argument(
        "--deviation-only",
        action="store_true",
        help="only the deviation from fp32 (e.g. at full size on a CPU, where the step table is slow)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    shape = TINY if args.tiny else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"device {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{'tiny' if args.tiny else 'SD1.5-size'} UNet",
        flush=True,
    )
    results: dict = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": "tiny" if args.tiny else "SD1.5",
    }
    start = time.perf_counter()
    source = random_unet(shape.config, torch.float32, "cpu")
    print(
        f"random fp32 weights: {sum(p.numel() for p in source.parameters()) / 1e9:.3f} G parameters, "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    if not args.deviation_only:
        results["steps"] = step_table(
            source, shape.sizes, args.batches, args.dtypes, args.repeats, shape.reference_size, device
        )
        results["graft"] = grafted_step(source, shape.sizes[0], args.repeats, shape.reference_size, device)
        if args.comfyui:
            results["partial_load"] = partial_load(
                source, args.comfyui, args.budget, shape.sizes[0], args.repeats, shape.reference_size, device
            )
        else:
            print("partial load through ComfyUI: not measured (give --comfyui /path/to/ComfyUI)")
    results["deviation_from_fp32"] = deviation(source, args.dtypes, shape.sizes[0], shape.reference_size, device)
    results["noise_matches_official"] = noise_check(device)
    results["total_seconds"] = time.perf_counter() - start
    print(f"total {results['total_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
