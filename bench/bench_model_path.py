"""Seconds per sampling step in a real ComfyUI (CPU, tiny seeded models): the Generator against
FlashFace Apply + KSampler on the same settings (same size, steps, cfg, references).

Each route runs at two step counts, twice each (models cached after the first run); the seconds
per step are the slope between the two counts, so loading, detection, prompt encoding and VAE
decoding cancel out.

    python bench/bench_model_path.py
    python bench/bench_model_path.py --size 256 --steps 10 30 --sampler euler --scheduler normal
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from comfy_installs import default_install, unavailable_reason  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from comfy_workflows import api_workflow, cheap_model_workflow, set_inputs  # noqa: E402
from tiny_flashface_models import tiny_model_server  # noqa: E402


def generator_prompt(size: int, steps: int, seed: int) -> dict:
    prompt = api_workflow("flashface_one_photo")
    return set_inputs(prompt, "FlashFace_Generator", width=size, height=size, steps=steps, seed=seed)


def ksampler_prompt(size: int, steps: int, seed: int, sampler: str, scheduler: str) -> dict:
    return cheap_model_workflow("flashface_ksampler", size, steps, seed=seed, sampler_name=sampler, scheduler=scheduler)


def seconds(server: ComfyServer, make, steps: int, repeats: int) -> float:
    times = []
    for repeat in range(repeats + 1):
        run = server.run(make(steps, 100 + repeat), timeout=3600)
        if run.status != "success":
            raise SystemExit(f"run failed: {run.status} {run.error_text()}")
        if repeat:  # the first run loads the models
            times.append(run.seconds)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs=2, default=[5, 20])
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--scheduler", default="karras")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if reason := unavailable_reason():
        print(reason, file=sys.stderr)
        return 1
    routes = {
        "Generator (ddim, official)": lambda steps, seed: generator_prompt(args.size, steps, seed),
        f"Apply + KSampler ({args.sampler}, {args.scheduler})": lambda steps, seed: ksampler_prompt(
            args.size, steps, seed, args.sampler, args.scheduler
        ),
        "Apply + KSampler (ddim, ddim_uniform)": lambda steps, seed: ksampler_prompt(
            args.size, steps, seed, "ddim", "ddim_uniform"
        ),
    }
    with (
        tempfile.TemporaryDirectory(prefix="flashface-bench-") as workdir,
        tiny_model_server(Path(workdir), default_install()) as server,
        PeakMemory(server.pid) as memory,
    ):
        few, many = args.steps
        print(
            f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']}, CPU, tiny models, "
            f"{args.size}x{args.size}, one reference photo; steps {few} and {many}",
            flush=True,
        )
        for name, make in routes.items():
            short, long = seconds(server, make, few, args.repeats), seconds(server, make, many, args.repeats)
            print(
                f"{name:<42} {few} steps {short:6.2f} s, {many} steps {long:6.2f} s, "
                f"{(long - short) / (many - few) * 1000:6.1f} ms per step",
                flush=True,
            )
    print(f"server: {memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
