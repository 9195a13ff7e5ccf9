"""Small seeded SD 1.x VAE checkpoints in the published `sd-v1-vae.pth` naming, or the standard
CompVis naming of the same weights. The default has four levels (factor 8) and 4 latent channels,
like the real VAE, so it fits the tiny pipeline models."""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.vae import AutoencoderKL, VAEConfig, standard_plan
from seeded_weights import save_state_dict, seeded_state_dict


def tiny_vae_state_dict(
    seed: int = 0,
    dim: int = 32,
    dim_mult=(1, 1, 1, 1),
    num_res_blocks: int = 1,
    z_dim: int = 4,
    naming: str = "official",
) -> dict[str, torch.Tensor]:
    """Fan-in scaled weights (activations stay O(1)); norms near identity."""
    config = VAEConfig(dim=dim, dim_mult=tuple(dim_mult), num_res_blocks=num_res_blocks, z_dim=z_dim)
    with torch.device("meta"):
        shapes = {key: tensor.shape for key, tensor in AutoencoderKL(config).state_dict().items()}
    state = seeded_state_dict(shapes, seed)
    if naming == "official":
        return state
    if naming != "standard":
        raise ValueError(f"unknown naming {naming!r}")
    standard = {}
    for key, plan in standard_plan(config).items():
        for file_key, part in zip(plan.file_keys, state[key].chunk(len(plan.file_keys))):
            standard[file_key] = part.clone()
    return standard


def write_tiny_vae(path, seed: int = 0, naming: str = "official", **sizes) -> Path:
    """.safetensors by suffix, else a torch.save pickle like the published file."""
    return save_state_dict(tiny_vae_state_dict(seed, naming=naming, **sizes), path)
