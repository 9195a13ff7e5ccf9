"""Small seeded FlashFace UNet checkpoints in the published `flashface.ckpt` key format.

Every aliased tensor is stored twice (`encoder.*` and `ori_encoder.*` ...) with equal values and
`ref_middle.*` is included, as in the real file. `.safetensors` files carry the head count as
metadata "num_heads"; the default of 8 heads is also the loader's fallback, so `.ckpt` files
load the same model without being told.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.ops import TORCH_OPERATIONS
from flashface.models.unet import FlashFaceUNet, UNetConfig, build_middle_block
from flashface.models.unet_loading import CONV_IN_MASK_WEIGHT, CONV_IN_WEIGHT, file_keys, unused_middle_file_key
from seeded_weights import save_state_dict, seeded_state_dict


def tiny_unet_config(
    context_dim=32, dim=32, dim_mult=(1, 2), num_res_blocks=1, attn_scales=(1.0, 0.5), num_heads=8
) -> UNetConfig:
    return UNetConfig(
        dim=dim,
        dim_mult=tuple(dim_mult),
        num_res_blocks=num_res_blocks,
        attn_scales=tuple(attn_scales),
        num_heads=num_heads,
        context_dim=context_dim,
    )


def checkpoint_key_shapes(config: UNetConfig) -> dict[str, torch.Size]:
    """Keys and shapes of a file in the published layout (aliases and `ref_middle` included)."""
    with torch.device("meta"):
        model = FlashFaceUNet(config)
        unused_middle = build_middle_block(TORCH_OPERATIONS, config, reads_references=False)
    shapes = {
        file_key: tensor.shape
        for key, tensor in model.state_dict().items()
        for file_key in file_keys(key)
        if key != CONV_IN_MASK_WEIGHT
    }
    for file_key in file_keys(CONV_IN_WEIGHT):
        shapes[file_key] = torch.Size((config.dim, config.in_channels, 3, 3))
    shapes.update({unused_middle_file_key(key): t.shape for key, t in unused_middle.state_dict().items()})
    return shapes


def tiny_unet_state_dict(seed=0, **sizes) -> dict[str, torch.Tensor]:
    """Seeded weights in the published key format (each aliased `ori_` tensor a copy)."""
    shapes = checkpoint_key_shapes(tiny_unet_config(**sizes))
    state = seeded_state_dict({key: shapes[key] for key in sorted(shapes) if not key.startswith("ori_")}, seed)
    state.update({"ori_" + key: value.clone() for key, value in list(state.items()) if "ori_" + key in shapes})
    return state


def write_tiny_unet(
    path, seed=0, context_dim=32, dim=32, dim_mult=(1, 2), num_res_blocks=1, attn_scales=(1.0, 0.5), num_heads=8
) -> Path:
    """Write a tiny UNet as .safetensors (with num_heads metadata) or a torch.save pickle."""
    state = tiny_unet_state_dict(
        seed,
        context_dim=context_dim,
        dim=dim,
        dim_mult=dim_mult,
        num_res_blocks=num_res_blocks,
        attn_scales=attn_scales,
        num_heads=num_heads,
    )
    return save_state_dict(state, path, {"num_heads": str(num_heads)})
