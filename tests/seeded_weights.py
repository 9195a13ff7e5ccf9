"""The one recipe for the tests' small seeded models, and the one writer of their files."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def seeded_state_dict(
    shapes: Mapping[str, torch.Size],
    seed: int,
    *,
    weight_scale: float = 1.0,
    unit_scale: Callable[[str], bool] = lambda key: False,
) -> dict[str, torch.Tensor]:
    """Seeded values for `shapes`, drawn in the order given: weights fan-in scaled (times
    `weight_scale`, or unit Gaussian where `unit_scale(key)`, e.g. embeddings) so activations
    stay O(1); norm scales near 1, biases and running means near 0, running variances near 1,
    BatchNorm counters 0."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.int64)
            continue
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            state[key] = noise if unit_scale(key) else noise * (weight_scale * shape[1:].numel() ** -0.5)
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * noise.abs()
        elif key.endswith("weight"):  # norm scale
            state[key] = 1 + 0.1 * noise
        else:  # bias, running mean
            state[key] = 0.1 * noise
    return state


def save_state_dict(state: dict, path, metadata: dict[str, str] | None = None) -> Path:
    """.safetensors by suffix (with `metadata`), otherwise a torch.save pickle like the published files."""
    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path, metadata=metadata)
    else:
        torch.save(state, path)
    return path
