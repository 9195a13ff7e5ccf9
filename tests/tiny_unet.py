"""Small seeded FlashFace UNet checkpoints in the published `flashface.ckpt` key format.

Every aliased tensor is stored twice (`encoder.*` and `ori_encoder.*` ...) with equal values and
`ref_middle.*` is included, as in the real file. `.safetensors` files carry the head count as
metadata "num_heads"; the default of 8 heads is also the loader's fallback, so `.ckpt` files
load the same model without being told.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from flashface.models.unet import UNetConfig, checkpoint_key_shapes


def tiny_unet_config(context_dim=32, dim=32, dim_mult=(1, 2), num_res_blocks=1,
                     attn_scales=(1.0, 0.5), num_heads=8) -> UNetConfig:
    return UNetConfig(dim=dim, dim_mult=tuple(dim_mult), num_res_blocks=num_res_blocks,
                      attn_scales=tuple(attn_scales), num_heads=num_heads, context_dim=context_dim)


def tiny_unet_state_dict(seed=0, **sizes) -> dict[str, torch.Tensor]:
    """Seeded weights (fan-in scaled, so activations stay O(1)) in the published key format."""
    generator = torch.Generator().manual_seed(seed)
    shapes = checkpoint_key_shapes(tiny_unet_config(**sizes))
    state = {}
    for key in sorted(k for k in shapes if not k.startswith("ori_")):
        shape = shapes[key]
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            value = noise * shape[1:].numel() ** -0.5
        elif key.endswith(".weight"):  # norm scale
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        state[key] = value
        if "ori_" + key in shapes:
            state["ori_" + key] = value.clone()
    return state


def write_tiny_unet(path, seed=0, context_dim=32, dim=32, dim_mult=(1, 2), num_res_blocks=1,
                    attn_scales=(1.0, 0.5), num_heads=8) -> Path:
    """Write a tiny UNet as .safetensors (with num_heads metadata) or a torch.save pickle."""
    path = Path(path)
    state = tiny_unet_state_dict(seed, context_dim=context_dim, dim=dim, dim_mult=dim_mult,
                                 num_res_blocks=num_res_blocks, attn_scales=attn_scales,
                                 num_heads=num_heads)
    os.makedirs(path.parent, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path, metadata={"num_heads": str(num_heads)})
    else:
        torch.save(state, path)
    return path
