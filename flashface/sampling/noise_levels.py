"""Variance-preserving (VP) and variance-exploding (VE) noise levels, and the change between them.

FlashFace's latents are VP: x = α·x0 + σ·ε with α = √(1 − σ²). k-diffusion's solvers and ComfyUI's
samplers work on VE latents y = x0 + s·ε. Both describe the same process under y = x/α, s = σ/α.
Each function takes a Python float or a tensor.
"""

from __future__ import annotations

import math
from typing import overload

import torch


@overload
def vp_to_ve(sigma: torch.Tensor) -> torch.Tensor: ...
@overload
def vp_to_ve(sigma: float) -> float: ...
def vp_to_ve(sigma):
    """VP noise std σ → VE noise level σ/α (inf at σ = 1)."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(sigma < 1, (sigma**2 / (1 - sigma**2)) ** 0.5, torch.full_like(sigma, math.inf))
    return math.inf if sigma >= 1 else (sigma**2 / (1 - sigma**2)) ** 0.5


@overload
def ve_to_vp(sigma: torch.Tensor) -> torch.Tensor: ...
@overload
def ve_to_vp(sigma: float) -> float: ...
def ve_to_vp(sigma):
    """VE noise level s → VP noise std s/√(1 + s²) (1 at inf)."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), (sigma**2 / (1 + sigma**2)) ** 0.5)
    return 1.0 if math.isinf(sigma) else (sigma**2 / (1 + sigma**2)) ** 0.5


@overload
def ve_scale(sigma: torch.Tensor) -> torch.Tensor: ...
@overload
def ve_scale(sigma: float) -> float: ...
def ve_scale(sigma):
    """α = 1/√(1 + s²) of a VE level s: the VP latent is α·y."""
    return (1 + sigma**2) ** -0.5
