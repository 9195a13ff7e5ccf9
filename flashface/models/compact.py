"""Reading a compact FlashFace UNet file (written by `convert.convert_unet`) as the published one.

A compact file keeps each aliased pair of the published checkpoint once (the `ori_` copy dropped)
and says so in its metadata; `compact_view` answers the dropped names with the tensor kept, so
every loader reads either file the same way.
"""

from __future__ import annotations

import json

import torch

from .checkpoint import Checkpoint

COMPACT_FORMAT = "flashface-unet-compact"
ALIAS_PREFIX = "ori_"
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}


class CompactCheckpoint(Checkpoint):
    """A compact file seen as the published one: each dropped `ori_` name reads the kept tensor."""

    def __init__(self, stored: Checkpoint):
        self.stored, self.path = stored, stored.path
        self.aliases = {ALIAS_PREFIX + key: key for key in json.loads(stored.metadata().get("aliased", "[]"))}

    def keys(self) -> list[str]:
        return self.stored.keys() + list(self.aliases)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.stored.shape(self.aliases.get(key, key))

    def tensor(self, key: str) -> torch.Tensor:
        return self.stored.tensor(self.aliases.get(key, key))

    def metadata(self) -> dict[str, str]:
        return self.stored.metadata()

    def close(self) -> None:
        self.stored.close()


def stored_weight_dtype(checkpoint: Checkpoint) -> torch.dtype | None:
    """The dtype a compact file's weights were stored in (None for any other file)."""
    if checkpoint.metadata().get("format") != COMPACT_FORMAT:
        return None
    names = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
    return names.get(checkpoint.metadata().get("weights", ""))


def compact_view(checkpoint: Checkpoint) -> Checkpoint:
    """`checkpoint` as the published layout: a CompactCheckpoint for a compact file, else itself."""
    return CompactCheckpoint(checkpoint) if checkpoint.metadata().get("format") == COMPACT_FORMAT else checkpoint
