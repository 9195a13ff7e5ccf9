"""A tiny SD1.5-layout ControlNet (LDM naming, `control_model.` prefix, as the published .pth
ControlNets) and a tiny T2I-Adapter (the TencentARC layout of `t2iadapter_*_sd14v1.pth`) for tiny
FlashFace UNets, written by the tests and loaded by ComfyUI's own ControlNetLoader.

ComfyUI infers a ControlNet's architecture from its keys and, for a size it does not know, takes
64 channels per attention head, so its base width must be a multiple of 64: these go with a tiny
UNet of width 64 (`CONTROLNET_UNET`). The ControlNet's own encoder is a copy of that UNet's main
path (its input conv over the latent channels only), which shows the names agree; the hint
encoder and the zero convolutions are ControlNet's own.

A T2I-Adapter gives one residual per resolution level of SD1.5 (after input blocks 2, 5, 8 and 11,
widths c, 2c, 4c, 4c), so its UNet has SD1.5's four levels of two res blocks (`ADAPTER_UNET`).
ComfyUI reads the adapter's base width from its first convolution and its hint channels from the
input width (pixel-unshuffled by 8: 3 colour channels -> 192).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.unet_loading import load_unet
from seeded_weights import save_state_dict, seeded_state_dict
from tiny_unet import tiny_unet_state_dict, write_tiny_unet

CONTROLNET_WIDTH = 64
CONTROLNET_UNET = dict(dim=CONTROLNET_WIDTH, num_heads=2)  # tiny_unet sizes of the UNet it steers
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # SD1.5 ControlNet's hint encoder (stride 2 at 32, 96, 256)
ADAPTER_UNET: dict[str, Any] = dict(dim=32, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(1.0, 0.5, 0.25))
ADAPTER_UNSHUFFLE = 8  # the adapter folds 8 x 8 pixels into channels: its level 0 is the latent's size


def write_controlnet_unet(path: Path, context_dim: int, seed: int = 0) -> Path:
    return write_tiny_unet(path, seed=seed, context_dim=context_dim, **CONTROLNET_UNET)


def write_tiny_controlnet(path: Path, context_dim: int, seed: int = 0, zero_outputs: bool = False) -> Path:
    """The ControlNet for the UNet of `write_controlnet_unet` (same seed and context width);
    `zero_outputs`: its zero convolutions left at zero, as a freshly made ControlNet is."""
    unet = load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed, context_dim=context_dim, **CONTROLNET_UNET)))
    encoder = {
        key: value
        for key, value in unet.state_dict().items()
        if key.startswith(("time_embed.", "input_blocks.", "middle_block."))
        and ".reference_attn." not in key
        and not key.endswith(".mask_weight")
    }
    shapes = {}
    widths = (3, *HINT_WIDTHS)
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        shapes[f"input_hint_block.{2 * index}.weight"] = torch.Size((fan_out, fan_in, 3, 3))
        shapes[f"input_hint_block.{2 * index}.bias"] = torch.Size((fan_out,))
    last = 2 * len(HINT_WIDTHS)
    shapes[f"input_hint_block.{last}.weight"] = torch.Size((CONTROLNET_WIDTH, HINT_WIDTHS[-1], 3, 3))
    shapes[f"input_hint_block.{last}.bias"] = torch.Size((CONTROLNET_WIDTH,))
    outputs = {}
    for index, block in enumerate(unet.input_blocks):
        channels = [p for name, p in block.named_parameters() if name.endswith("weight") and p.dim() == 4][-1].shape[0]
        outputs[f"zero_convs.{index}.0"] = channels
    outputs["middle_block_out.0"] = unet.middle_block[-1].out_layers[-1].weight.shape[0]
    for name, channels in outputs.items():
        shapes[f"{name}.weight"] = torch.Size((channels, channels, 1, 1))
        shapes[f"{name}.bias"] = torch.Size((channels,))
    own = seeded_state_dict(shapes, seed + 100, weight_scale=1.0)
    if zero_outputs:
        own.update(
            {
                key: torch.zeros_like(value)
                for key, value in own.items()
                if key.split(".")[0] in ("zero_convs", "middle_block_out")
            }
        )
    state = {f"control_model.{key}": value.contiguous() for key, value in {**encoder, **own}.items()}
    return save_state_dict(state, path)


def write_adapter_unet(path: Path, context_dim: int, seed: int = 0) -> Path:
    return write_tiny_unet(path, seed=seed, context_dim=context_dim, **ADAPTER_UNET)


def write_tiny_t2i_adapter(
    path: Path, seed: int = 0, colour_channels: int = 3, kernel: int = 1, zero: bool = False
) -> Path:
    """A T2I-Adapter for the UNet of `write_adapter_unet`: per level two res blocks (an input conv
    where the width changes, average-pool downsampling from level 1 on, no skip convs), as ComfyUI's
    `load_t2i_adapter` builds for a published SD1.4 adapter; `zero`: every weight zero, so every
    residual it gives is zero."""
    width = ADAPTER_UNET["dim"]
    widths = [width * mult for mult in ADAPTER_UNET["dim_mult"]]
    shapes = {
        "conv_in.weight": torch.Size((width, colour_channels * ADAPTER_UNSHUFFLE**2, 3, 3)),
        "conv_in.bias": torch.Size((width,)),
    }
    previous = width
    for level, channels in enumerate(widths):
        for index in range(2):
            block = f"body.{2 * level + index}"
            if index == 0 and previous != channels:
                shapes[f"{block}.in_conv.weight"] = torch.Size((channels, previous, kernel, kernel))
                shapes[f"{block}.in_conv.bias"] = torch.Size((channels,))
            shapes[f"{block}.block1.weight"] = torch.Size((channels, channels, 3, 3))
            shapes[f"{block}.block1.bias"] = torch.Size((channels,))
            shapes[f"{block}.block2.weight"] = torch.Size((channels, channels, kernel, kernel))
            shapes[f"{block}.block2.bias"] = torch.Size((channels,))
        previous = channels
    state = seeded_state_dict(shapes, seed + 200, weight_scale=1.0)
    if zero:
        state = {key: torch.zeros_like(value) for key, value in state.items()}
    return save_state_dict(state, path)
