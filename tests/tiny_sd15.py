"""Small seeded SD1.5 checkpoints in the real file formats, the shape of a tiny FlashFace UNet's main
path: what a user's fine-tune (Realistic Vision & co.) and its base look like to the graft.

An SD1.5 UNet has every tensor of FlashFace's main path under the same ComfyUI/LDM name, apart from
FlashFace's additions (the input conv's face-mask channel, ``reference_attn``); the reference
network is FlashFace's alone. `tests/comfy_scenarios.py:sd15_keys` holds this naming rule to
ComfyUI's own SD UNet.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.unet import FlashFaceUNet
from seeded_weights import save_state_dict, seeded_state_dict
from tiny_unet import tiny_unet_config

FULL_CHECKPOINT = "model.diffusion_model."
UNET_ONLY = "diffusion_model."
# What else a single-file SD1.5 checkpoint holds: the VAE, the text encoder, training leftovers.
OTHER_PARTS = {
    "first_stage_model.encoder.conv_in.weight": torch.Size((8, 3, 3, 3)),
    "first_stage_model.decoder.conv_out.weight": torch.Size((3, 8, 3, 3)),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.Size((16, 8)),
    "model_ema.decay": torch.Size(()),
}


def sd15_shapes(**sizes) -> dict[str, torch.Size]:
    """The SD1.5 UNet tensors (no prefix) of a tiny FlashFace UNet's main path."""
    with torch.device("meta"):
        unet = FlashFaceUNet(tiny_unet_config(**sizes))
    return {
        key: value.shape
        for key, value in unet.state_dict().items()
        if not key.startswith("reference_") and ".reference_attn." not in key and not key.endswith("mask_weight")
    }


def sd15_unet(seed: int, **sizes) -> dict[str, torch.Tensor]:
    """Seeded SD1.5 UNet tensors (no prefix), fp32."""
    return seeded_state_dict(sd15_shapes(**sizes), seed)


def write_sd15(
    path,
    unet: dict[str, torch.Tensor],
    prefix: str = FULL_CHECKPOINT,
    dtype: torch.dtype = torch.float32,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A checkpoint file of `unet` under `prefix` in `dtype`: with the full-checkpoint prefix also the
    VAE, text-encoder and EMA tensors a single-file checkpoint carries; .ckpt files are pickles
    wrapped in {"state_dict": ..., "global_step": ...} as trainers save them."""
    state = {prefix + key: value.to(dtype) for key, value in unet.items()}
    if prefix == FULL_CHECKPOINT:
        state.update(seeded_state_dict(OTHER_PARTS, 99))
    state.update(extra or {})
    if Path(path).suffix != ".safetensors":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state, "global_step": 840000}, path)
        return path
    return save_state_dict(state, path)
