"""What every network is built from and the rules they share.

* `TORCH_OPERATIONS`: the layer namespace (``Linear``, ``Conv2d``, ``GroupNorm``, ``LayerNorm``)
  every network takes as ``operations``; ComfyUI passes ``comfy.ops`` namespaces of the same
  names, whose layers cast weights per call.
* Precision: normalizations (and the explicit softmax) never compute below fp32, and norm
  parameters are stored in at least fp32 (`norm_parameter_names`). This is what the official
  fp16 autocast does: its GroupNorm runs in fp32 and its LayerNorm returns fp32, which the next
  layer casts down, giving the same numbers.
* Reading a network's layout from a checkpoint: `required_shape`, `count_indexed`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from ..errors import ModelFileError

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

TORCH_OPERATIONS = SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d, GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm)
NORMS = (nn.GroupNorm, nn.LayerNorm)  # comfy.ops norms are subclasses


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32, fp64 stays fp64 (used by the float64 parity checks)."""
    return torch.promote_types(dtype, torch.float32)


def norm_at_least_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` computed in at least fp32 (its parameters are kept so), result in x's dtype."""
    return norm(x.to(at_least_fp32(x.dtype))).to(x.dtype)


def through_layers(layers: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """x through a sequence of layers, its norms computed in at least fp32."""
    for layer in layers:
        x = norm_at_least_fp32(layer, x) if isinstance(layer, NORMS) else layer(x)
    return x


def norm_parameter_names(module: nn.Module) -> set[str]:
    """State-dict names of the parameters of every normalization layer in `module`."""
    return {f"{name}.{param}" if name else param for name, child in module.named_modules()
            if isinstance(child, NORMS) for param, _ in child.named_parameters(recurse=False)}


def required_shape(checkpoint: "Checkpoint", key: str, problem: str, dims: int | None = None) -> tuple[int, ...]:
    """The shape of tensor `key`; a ModelFileError saying `problem` when it is missing (or does
    not have `dims` dimensions)."""
    shape = tuple(checkpoint.shape(key)) if key in checkpoint else None
    if shape is None or (dims is not None and len(shape) != dims):
        found = "missing" if shape is None else f"of shape {shape}"
        raise ModelFileError(f"{checkpoint.path}: tensor {key} is {found}. {problem}")
    return shape


def count_indexed(checkpoint: "Checkpoint", pattern: str, start: int = 0) -> int:
    """How many of pattern.format(start), pattern.format(start + 1), ... are in the checkpoint,
    counting until the first that is not."""
    count = 0
    while pattern.format(start + count) in checkpoint:
        count += 1
    return count
