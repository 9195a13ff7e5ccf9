"""Tiny SD1.5 LoRA files for the tiny FlashFace UNet (tiny_unet.py), in the key formats ComfyUI's
stock LoRA loaders read, and the same LoRAs merged into the UNet file by hand (the oracle).

Each target is written down three times, by hand and independently of the code under test: its
name in the LoRA file's convention (diffusers' UNet names for kohya and diffusers files, LDM's for
LDM files), and the tensor it changes in the published FlashFace file. A LoRA changes a weight by
scale * up @ down (convolutions: over the flattened kernel), scale = alpha / rank where an alpha
is stored, 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seeded_weights import save_state_dict
from tiny_unet import tiny_unet_state_dict


@dataclass(frozen=True)
class Target:
    diffusers: str  # the layer in diffusers' UNet naming (kohya files: dots as underscores)
    ldm: str  # the layer in LDM's / ComfyUI's naming
    published: str  # the published file's weight it changes
    input_channels: tuple[int, int] | None = None  # (start, stop) of the part of its dim 1 it changes, else all

    @property
    def part(self) -> slice:
        return slice(*self.input_channels) if self.input_channels else slice(None)


# The tiny UNet: two levels of one residual block + attention site each.
KOHYA_TARGETS = (
    Target(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "encoder.1.1.blocks.0.self_attn.q.weight",
    ),
    Target(
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
        "output_blocks.3.1.transformer_blocks.0.attn2.to_k",
        "decoder.3.1.blocks.0.cross_attn.k.weight",
    ),
    Target(
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
        "middle_block.1.transformer_blocks.0.ff.net.2",
        "middle.1.blocks.0.ffn.2.weight",
    ),
    Target("up_blocks.0.attentions.0.proj_in", "output_blocks.0.1.proj_in", "decoder.0.1.conv1.weight"),
    # LoCon: 3x3 convolutions, the input conv's latent channels included (its mask channel stays)
    Target("down_blocks.1.resnets.0.conv1", "input_blocks.3.0.in_layers.2", "encoder.3.0.layer1.2.weight"),
    Target("conv_in", "input_blocks.0.0", "encoder.0.weight", (0, 4)),
)
DIFFUSERS_TARGETS = (
    Target(
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
        "input_blocks.3.1.transformer_blocks.0.attn1.to_v",
        "encoder.3.1.blocks.0.self_attn.v.weight",
    ),
    Target(
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0",
        "decoder.2.1.blocks.0.self_attn.o.weight",
    ),
    Target("up_blocks.0.resnets.1.conv2", "output_blocks.1.0.out_layers.3", "decoder.1.0.layer2.3.weight"),
)
LDM_TARGETS = (
    Target(
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_q",
        "middle_block.1.transformer_blocks.0.attn2.to_q",
        "middle.1.blocks.0.cross_attn.q.weight",
    ),
    Target("up_blocks.0.upsamplers.0.conv", "output_blocks.1.2.conv", "decoder.1.2.1.weight"),
)
RANK = 2
ALPHA = 1.0  # scale alpha / rank = 0.5


def _factors(weight_shape: torch.Size, generator: torch.Generator, strength: float = 0.5):
    """(up, down) for a layer of that weight shape: up [out, rank(,1,1)], down [rank, in(,k,k)]."""
    out_channels, in_shape = weight_shape[0], weight_shape[1:]
    down = torch.randn((RANK, *in_shape), generator=generator) * strength
    up = torch.randn((out_channels, RANK, *([1] * (len(in_shape) - 1))), generator=generator) * strength
    return up, down


def _delta(up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale


def _layer_shape(published: dict[str, torch.Tensor], target: Target) -> torch.Size:
    return published[target.published][:, target.part].shape


def write_loras(
    folder: Path, seed: int = 0, context_dim: int = 32
) -> dict[str, tuple[Path, dict[Target, torch.Tensor]]]:
    """Three LoRA files for the tiny UNet of `seed`: {format: (path, the change it makes to each
    target's layer at strength 1)}; formats "kohya" (LoRA + LoCon, with a text-encoder part),
    "diffusers" (attention-processor and PEFT keys) and "ldm"."""
    published = tiny_unet_state_dict(seed, context_dim=context_dim)
    generator = torch.Generator().manual_seed(1000 + seed)
    files, deltas = {}, {}

    kohya, kohya_deltas = {}, {}
    for target in KOHYA_TARGETS:
        up, down = _factors(_layer_shape(published, target), generator)
        name = "lora_unet_" + target.diffusers.replace(".", "_")
        kohya.update(
            {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(ALPHA)}
        )
        kohya_deltas[target] = _delta(up, down, ALPHA / RANK)
    # a text-encoder part, as kohya SD1.5 LoRAs have: FlashFace's text encoder is its own
    kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(768, RANK)
    kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(RANK, 768)
    files["kohya"], deltas["kohya"] = (
        save_state_dict(kohya, Path(folder) / "tiny_kohya_locon.safetensors"),
        kohya_deltas,
    )

    diffusers, diffusers_deltas = {}, {}
    for target in DIFFUSERS_TARGETS:
        up, down = _factors(_layer_shape(published, target), generator)
        name = "unet." + target.diffusers
        if ".to_" in name:  # diffusers' attention-processor format
            name = name.replace(".to_", ".processor.to_").removesuffix(".0")
            diffusers.update({f"{name}_lora.up.weight": up, f"{name}_lora.down.weight": down})
        else:  # PEFT's
            diffusers.update({f"{name}.lora_B.weight": up, f"{name}.lora_A.weight": down})
        diffusers_deltas[target] = _delta(up, down, 1.0)
    files["diffusers"] = save_state_dict(diffusers, Path(folder) / "tiny_diffusers_peft.safetensors")
    deltas["diffusers"] = diffusers_deltas

    ldm, ldm_deltas = {}, {}
    for target in LDM_TARGETS:
        up, down = _factors(_layer_shape(published, target), generator)
        name = "diffusion_model." + target.ldm
        ldm.update(
            {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(ALPHA)}
        )
        ldm_deltas[target] = _delta(up, down, ALPHA / RANK)
    files["ldm"], deltas["ldm"] = save_state_dict(ldm, Path(folder) / "tiny_ldm_lora.safetensors"), ldm_deltas
    return {name: (files[name], deltas[name]) for name in files}


def write_merged_unet(
    path: Path, deltas: dict[Target, torch.Tensor], strength: float = 1.0, seed: int = 0, context_dim: int = 32
) -> Path:
    """The tiny UNet of `seed` with LoRA `deltas` (times `strength`) merged into its published
    weights by hand (each aliased copy alike), as a .safetensors file Load Model reads."""
    state = tiny_unet_state_dict(seed, context_dim=context_dim)
    for target, delta in deltas.items():
        for key in (target.published, "ori_" + target.published):
            if key in state:
                state[key][:, target.part] += strength * delta.to(state[key].dtype)
    return save_state_dict(state, path, {"num_heads": "8"})
