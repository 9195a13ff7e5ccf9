"""Precision rules shared by the networks: normalizations and softmax never run below fp32."""

from __future__ import annotations

import torch
from torch import nn


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32, fp64 stays fp64 (used by the float64 parity checks)."""
    return torch.promote_types(dtype, torch.float32)


def norm_at_least_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` computed in at least fp32 (its parameters are kept so), result in x's dtype.

    This is what the official autocast does: its GroupNorm runs in fp32, and its LayerNorm returns
    fp32, which the next linear casts down, giving the same numbers.
    """
    return norm(x.to(at_least_fp32(x.dtype))).to(x.dtype)
