"""Another SD1.5 fine-tune's look on FlashFace: "add difference" (experimental).

FlashFace is a full fine-tune of SD1.5, so its UNet cannot simply be swapped for a user's
checkpoint. A fine-tune with extra parts is moved onto another fine-tune of the same base by adding
the difference between that fine-tune and the base (ControlNet's author gave it for ControlNet,
ComfyUI's examples make inpainting models of any checkpoint so): for every main-path tensor of the
FlashFace UNet that an SD1.5 UNet also has (the same ComfyUI/LDM name and shape),

    W + s * (CUSTOM - BASE),

computed in fp32 and stored in W's dtype. The input convolution's four latent channels are grafted,
its face-mask channel (``mask_weight``) is not; FlashFace's own reference attention
(``reference_attn``) and the reference encoder and decoder (``reference_*_blocks``) are never
touched. The time embedding and the middle block, which the reference pass shares with the main
pass (as officially), are grafted as ComfyUI's merge nodes graft them.

SD1.5 files are read as users have them: single-file checkpoints (``model.diffusion_model.*``; the
VAE and text-encoder tensors are not read) and UNet-only files with or without the
``diffusion_model.`` prefix, ``.safetensors`` or pickles (``weights_only``), in fp32, fp16 or bf16,
one tensor pair at a time, so two SD1.5 models are never in memory at once. A file that is not an
SD1.5 UNet of the FlashFace UNet's layout is refused with what it looks like.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidInputError, ModelFileError
from .checkpoint import Checkpoint, open_checkpoint
from .compact import COMPACT_FORMAT

SD15_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")  # full checkpoint, UNet-only files
REFERENCE_NETWORK = ("reference_input_blocks.", "reference_output_blocks.")
FLASHFACE_ONLY = (".reference_attn.", ".mask_weight")  # main-path tensors SD1.5 has no partner for
CONV_IN = "input_blocks.0.0.weight"
Progress = Callable[[int, int], None]  # (tensors done, tensors in all)


@dataclass(frozen=True)
class GraftFiles:
    """A graft to make: the SD1.5 fine-tune's file, the file of the base it was trained from, the strength."""

    checkpoint: str | os.PathLike
    base: str | os.PathLike
    strength: float = 1.0


def graft_shapes(unet: nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensors the graft changes: the main path's parameters that an SD1.5 UNet also has, with
    their shapes (the UNet's module names are ComfyUI's, so these are SD1.5's names)."""
    return {
        key: tuple(value.shape)
        for key, value in unet.state_dict().items()
        if not key.startswith(REFERENCE_NETWORK) and not any(part in key for part in FLASHFACE_ONLY)
    }


class SD15UNetFile:
    """An opened SD1.5 UNet file checked against the shapes the graft needs; `tensor(key)` by the
    UNet's own (prefix-free) name."""

    def __init__(self, checkpoint: Checkpoint, prefix: str):
        self.checkpoint, self.prefix, self.path = checkpoint, prefix, checkpoint.path

    def tensor(self, key: str) -> torch.Tensor:
        return self.checkpoint.tensor(self.prefix + key)


def _is_lora(keys: list[str]) -> bool:
    return any("lora_" in key or key.endswith(".alpha") or ".lora." in key for key in keys)


def _sd15_problem(checkpoint: Checkpoint, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str]:
    """(the prefix of its UNet tensors, "") for an SD1.5 UNet of `shapes`' layout, else ("", what it looks like)."""
    keys = checkpoint.keys()
    if checkpoint.metadata().get("format") == COMPACT_FORMAT or "ref_encoder.0.weight" in checkpoint:
        return "", "a FlashFace UNet file: give it as the FlashFace model, and an SD1.5 checkpoint here"
    if any(key.startswith(REFERENCE_NETWORK) or ".reference_attn." in key for key in keys):
        return "", "a FlashFace UNet in ComfyUI's names: give it as the FlashFace model, and an SD1.5 checkpoint here"
    if _is_lora(keys):
        return "", "a LoRA, not a checkpoint: apply it with LoraLoaderModelOnly on FlashFace Apply's MODEL"
    prefix = next((p for p in SD15_PREFIXES if p + CONV_IN in checkpoint), None)
    if prefix is None:
        if "conv_in.weight" in checkpoint or any(key.startswith("down_blocks.") for key in keys):
            return "", "a UNet in the diffusers naming: give the single-file .safetensors or .ckpt checkpoint"
        if any(key.startswith(("conditioner.embedders.", "model.diffusion_model.double_blocks.")) for key in keys):
            return "", "not an SD1.5 model (SDXL or a newer family)"
        sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
        return "", f"no SD1.5 UNet in it ({len(keys)} tensors, such as {sample}; a VAE or text encoder alone?)"
    if prefix + "label_emb.0.0.weight" in checkpoint:
        return "", "an SDXL checkpoint (FlashFace is SD1.5: only SD1.5 fine-tunes can be grafted)"
    wanted_in = shapes[CONV_IN][1]
    channels = checkpoint.shape(prefix + CONV_IN)[1]
    if channels != wanted_in:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(channels, f"a {channels}-channel")
        return "", f"{kind} UNet ({channels} input channels; FlashFace grafts a {wanted_in}-channel SD1.5 UNet)"
    context_key = next(key for key in shapes if key.endswith(".attn2.to_k.weight"))
    if prefix + context_key in checkpoint:
        width, wanted_width = checkpoint.shape(prefix + context_key)[1], shapes[context_key][1]
        if width != wanted_width:
            family = "an SD 2.x UNet" if width == 1024 else "a UNet"
            return "", f"{family} reading {width}-wide text (SD1.5's CLIP-L text is {wanted_width} wide)"
    for key, shape in shapes.items():
        if prefix + key not in checkpoint:
            return "", f"an SD1.5 UNet without the tensor {prefix}{key} (pruned or of another layout)"
        found = tuple(checkpoint.shape(prefix + key))
        if found != shape:
            return "", f"a UNet of another layout ({prefix}{key} is {found}, FlashFace's SD1.5 UNet has {shape})"
    return prefix, ""


def open_sd15_unet(path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]], role: str) -> SD15UNetFile:
    """`path` opened as an SD1.5 UNet with every tensor of `shapes`; a ModelFileError naming the file,
    its `role` ("the checkpoint to graft", "the base checkpoint") and what it looks like otherwise."""
    checkpoint = open_checkpoint(path)
    prefix, problem = _sd15_problem(checkpoint, shapes)
    if problem:
        checkpoint.close()
        raise ModelFileError(f"{os.fspath(path)} ({role}) is {problem}.")
    return SD15UNetFile(checkpoint, prefix)


class Graft:
    """The fine-tune and its base, opened; `difference(key)` = CUSTOM - BASE of one tensor, in fp32."""

    def __init__(self, custom: SD15UNetFile, base: SD15UNetFile, shapes: Mapping[str, tuple[int, ...]]):
        self.custom, self.base, self.shapes = custom, base, dict(shapes)

    def difference(self, key: str) -> torch.Tensor:
        difference = self.custom.tensor(key).float() - self.base.tensor(key).float()
        if not torch.isfinite(difference).all():
            raise ModelFileError(
                f"The tensor {key} of {self.custom.path} or {self.base.path} holds values that are not numbers "
                "(NaN or infinite): the file is damaged. Download it again."
            )
        return difference

    def differences(self, progress: Progress | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, CUSTOM - BASE) for every grafted tensor, one at a time."""
        for done, key in enumerate(self.shapes, 1):
            yield key, self.difference(key)
            if progress is not None:
                progress(done, len(self.shapes))


@contextmanager
def open_graft(
    custom: str | os.PathLike, base: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]]
) -> Iterator[Graft]:
    """The two SD1.5 files opened and checked against the grafted `shapes` (`graft_shapes`)."""
    if os.path.abspath(custom) == os.path.abspath(base):
        raise InvalidInputError(
            f"The checkpoint to graft and its base are the same file ({custom}): the difference would be zero. "
            "Give the fine-tune you like and the SD1.5 it was trained from (usually v1-5-pruned-emaonly)."
        )
    with ExitStack() as files:
        opened = []
        for path, role in ((custom, "the checkpoint to graft"), (base, "the base checkpoint")):
            file = open_sd15_unet(path, shapes, role)
            files.callback(file.checkpoint.close)
            opened.append(file)
        yield Graft(opened[0], opened[1], shapes)


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise InvalidInputError(
            f"The graft strength must be a finite number (1 = the whole difference), got {strength!r}."
        )
    return float(strength)


def add_difference(weight: torch.Tensor, difference: torch.Tensor, strength: float) -> torch.Tensor:
    """weight + strength * difference, summed in fp32. A weight with more input channels than the
    difference (the published input conv, whose last channel reads the face mask) gets it on its
    first channels, the latent ones."""
    if weight.shape == difference.shape:
        return weight.float() + strength * difference.to(weight.device)
    total = weight.float().clone()
    latent = total[:, : difference.shape[1]]
    latent += strength * difference.to(weight.device)
    return total


@torch.no_grad()
def graft_unet(
    unet: nn.Module,
    custom: str | os.PathLike,
    base: str | os.PathLike,
    strength: float = 1.0,
    progress: Progress | None = None,
) -> int:
    """Add strength * (CUSTOM - BASE) to `unet`'s grafted tensors in place (fp32 sums, stored in each
    tensor's dtype, on its device); the number of tensors changed. Strength 0 checks the files and
    changes nothing."""
    strength = check_strength(strength)
    shapes = graft_shapes(unet)
    with open_graft(custom, base, shapes) as graft:
        if strength == 0:
            return 0
        tensors = unet.state_dict(keep_vars=True)
        for key, difference in graft.differences(progress):
            weight = tensors[key].data
            weight.copy_(add_difference(weight, difference, strength))
    return len(shapes)
