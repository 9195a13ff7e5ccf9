"""A tiny SD1.5-layout ControlNet (LDM naming, `control_model.` prefix, as the published .pth
ControlNets) for a tiny FlashFace UNet, written by the tests and loaded by ComfyUI's own
ControlNetLoader.

ComfyUI infers a ControlNet's architecture from its keys and, for a size it does not know, takes
64 channels per attention head, so its base width must be a multiple of 64: these go with a tiny
UNet of width 64 (`CONTROLNET_UNET`). The ControlNet's own encoder is a copy of that UNet's main
path (its input conv over the latent channels only), which shows the names agree; the hint
encoder and the zero convolutions are ControlNet's own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.unet import load_unet
from seeded_weights import save_state_dict, seeded_state_dict
from tiny_unet import tiny_unet_state_dict, write_tiny_unet

CONTROLNET_WIDTH = 64
CONTROLNET_UNET = dict(dim=CONTROLNET_WIDTH, num_heads=2)  # tiny_unet sizes of the UNet it steers
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # SD1.5 ControlNet's hint encoder (stride 2 at 32, 96, 256)


def write_controlnet_unet(path: Path, context_dim: int, seed: int = 0) -> Path:
    return write_tiny_unet(path, seed=seed, context_dim=context_dim, **CONTROLNET_UNET)


def write_tiny_controlnet(path: Path, context_dim: int, seed: int = 0, zero_outputs: bool = False) -> Path:
    """The ControlNet for the UNet of `write_controlnet_unet` (same seed and context width);
    `zero_outputs`: its zero convolutions left at zero, as a freshly made ControlNet is."""
    unet = load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed, context_dim=context_dim, **CONTROLNET_UNET)))
    encoder = {key: value for key, value in unet.state_dict().items()
               if key.startswith(("time_embed.", "input_blocks.", "middle_block."))
               and ".reference_attn." not in key and not key.endswith(".mask_weight")}
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
        own.update({key: torch.zeros_like(value) for key, value in own.items() if key.split(".")[0] in
                    ("zero_convs", "middle_block_out")})
    state = {f"control_model.{key}": value.contiguous() for key, value in {**encoder, **own}.items()}
    return save_state_dict(state, path)
