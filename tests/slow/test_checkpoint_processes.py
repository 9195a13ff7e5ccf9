"""A loaded module and its weight file in a process of their own (flashface/models/checkpoint.py)."""

import subprocess

import pytest
import torch
from safetensors.torch import save_file

from comfy_process import child_command, result_of
from process_scenarios import TwoLayersBig


def _save(weights, path):
    if path.suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save(weights, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_loaded_module_owns_its_weights(tmp_path, suffix):
    """Overwriting the file in place (cp, curl -o) changes nothing in the loaded module, and a
    truncated file (its mapping gone) does not fault: run where a SIGBUS cannot end the test run."""
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=generator) for k, v in TwoLayersBig().state_dict().items()}
    path = _save(weights, tmp_path / f"big{suffix}")
    done = subprocess.run(
        child_command("process_scenarios:module_outlives_its_file", path=str(path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert result_of(done.stdout) == pytest.approx(float(weights["linear.weight"].sum() + weights["norm.weight"].sum()))
