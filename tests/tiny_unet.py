"""Small seeded FlashFace UNet checkpoints in the published `flashface.ckpt` key format.

Every aliased tensor is stored twice (`encoder.*` and `ori_encoder.*` ...) with equal values and
`ref_middle.*` is included, as in the real file. `.safetensors` files carry the head count as
metadata "num_heads"; the default of 8 heads is also the loader's fallback, so `.ckpt` files
load the same model without being told.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.unet import UNetConfig
from flashface.models.unet_loading import checkpoint_key_shapes
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
