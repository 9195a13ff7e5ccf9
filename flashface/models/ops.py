"""What every network is built from and the rules they share.

* `TORCH_OPERATIONS`: the layer namespace (``Linear``, ``Conv2d``, ``GroupNorm``, ``LayerNorm``)
  every network takes as ``operations``; ComfyUI passes ``comfy.ops`` namespaces of the same
  names, whose layers cast weights per call. `CASTING_OPERATIONS` are the library's own such
  layers, for weights stored in a dtype nothing computes in (fp8).
* `WEIGHT_DTYPES`: the storage dtypes a UNet can be loaded in, by the names users pick.
* Precision: normalizations (and the explicit softmax) never compute below fp32, and norm
  parameters are stored in at least fp32 (`norm_parameter_names`). This is what the official
  fp16 autocast does: its GroupNorm runs in fp32 and its LayerNorm returns fp32, which the next
  layer casts down, giving the same numbers.
* `host_to_device`: the one way small host-made tensors (indices, weights) reach the device
  while sampling, without the host waiting for the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

TORCH_OPERATIONS = SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d, GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm)
NORMS = (nn.GroupNorm, nn.LayerNorm)  # comfy.ops norms are subclasses

WEIGHT_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
STORAGE_ONLY_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)  # weights only: layers compute in another dtype


def compute_dtype_for(device: torch.device | str) -> torch.dtype:
    """What layers compute in when the weights are stored in a storage-only dtype: fp16 on a GPU,
    fp32 on the CPU (which has no fast fp16)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


class CastingLinear(nn.Linear):
    """A Linear whose weights are cast to the input's dtype at each call (stored in fp8, say)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # `input`: nn.Linear's name
        return F.linear(input, self.weight.to(input.dtype), None if self.bias is None else self.bias.to(input.dtype))


class CastingConv2d(nn.Conv2d):
    """A Conv2d whose weights are cast to the input's dtype at each call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # `input`: nn.Conv2d's name
        weight, bias = self.weight.to(input.dtype), None if self.bias is None else self.bias.to(input.dtype)
        return self._conv_forward(input, weight, bias)


CASTING_OPERATIONS = SimpleNamespace(
    Linear=CastingLinear, Conv2d=CastingConv2d, GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm
)


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp8/fp16/bf16/fp32, fp64 stays fp64 (used by the float64 parity checks)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    return {
        f"{name}.{param}" if name else param
        for name, child in module.named_modules()
        if isinstance(child, NORMS)
        for param, _ in child.named_parameters(recurse=False)
    }


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`. On CUDA the copy is from pinned memory and non-blocking: a plain
    copy from pageable memory would make the host wait for every kernel queued before it."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
