"""The SD 1.x KL-f8 VAE in the structure and key naming of FlashFace's `sd-v1-vae.pth`.

`encode` returns the posterior mean (FlashFace encodes deterministically) and `decode` takes an
unscaled latent; the pipeline multiplies/divides by `LATENT_SCALE`.

Mid-block attention: the official implementation, after attending, reshapes the ``[b, hw, c]``
result straight to ``[b, c, h, w]`` (its two permutations cancel), which mixes pixels and
channels before the output projection. The published weights were used with that behaviour, so
`attention="official"` (default) reproduces it; `attention="standard"` gives the standard
attention (``[b, hw, c]`` transposed to ``[b, c, hw]``) that other SD 1.x VAE code computes.

Files: the official naming (`encoder.conv1`, `encoder.downsamples.N.residual.K`,
`encoder.middle.1.to_qkv`, `conv1`/`conv2` for the quant convs ...) or the standard CompVis /
ComfyUI naming (`encoder.conv_in`, `encoder.down.I.block.J.norm1`, `encoder.mid.attn_1.q` ...,
`quant_conv`), optionally under `first_stage_model.` (a whole SD 1.x checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CancelCheck, InvalidInputError, ModelFileError, stop_if_cancelled
from .checkpoint import Checkpoint, Layout, TensorPlan, load_layout, required_shape
from .ops import TORCH_OPERATIONS, norm_at_least_fp32, through_layers

LATENT_SCALE = 0.18215
# How error messages name this network.
MODEL_NAME = "SD 1.x VAE"
EXPECTED_FILES = "sd-v1-vae.pth (FlashFace) or an SD 1.x VAE such as vae-ft-mse-840000-ema-pruned.safetensors"
STANDARD_PREFIXES = ("", "first_stage_model.")
GROUPS, EPS = 32, 1e-6
TILE_LATENT, TILE_OVERLAP = 64, 16  # latent cells of a decode tile (512 px) and of the overlap (128 px)
VAE_ATTENTIONS = ("official", "standard")
"""Mid-block attention variants (`load_vae(attention=...)`), the official one first; ComfyUI's own
VAE Decode computes the standard one."""


@dataclass(frozen=True)
class VAEConfig:
    dim: int = 128
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_dim: int = 4


class ResidualBlock(nn.Module):
    def __init__(self, ops, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            ops.GroupNorm(GROUPS, in_dim, eps=EPS),
            nn.SiLU(),
            ops.Conv2d(in_dim, out_dim, 3, padding=1),
            ops.GroupNorm(GROUPS, out_dim, eps=EPS),
            nn.SiLU(),
            nn.Dropout(0.0),
            ops.Conv2d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = ops.Conv2d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return through_layers(self.residual, x) + self.shortcut(x)


class Resample(nn.Module):
    """Downsample: pad right/bottom by one, stride-2 conv. Upsample: nearest ×2, conv."""

    def __init__(self, ops, dim: int, down: bool):
        super().__init__()
        if down:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), ops.Conv2d(dim, dim, 3, stride=2))
        else:
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest"), ops.Conv2d(dim, dim, 3, padding=1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


class MidAttention(nn.Module):
    """Single-head spatial self-attention with a fused qkv 1×1 conv (see the module docstring)."""

    def __init__(self, ops, dim: int, attention: str):
        super().__init__()
        if attention not in VAE_ATTENTIONS:
            raise InvalidInputError(f"VAE attention must be one of {', '.join(VAE_ATTENTIONS)}, not {attention!r}.")
        self.official = attention == "official"
        self.norm = ops.GroupNorm(GROUPS, dim, eps=EPS)
        self.to_qkv = ops.Conv2d(dim, dim * 3, 1)
        self.proj = ops.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(norm_at_least_fp32(self.norm, x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [b, hw, c]
        attended = attended.reshape(b, c, h, w) if self.official else attended.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(attended)


def _middle(ops, dim: int, attention: str) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(ops, dim, dim), MidAttention(ops, dim, attention), ResidualBlock(ops, dim, dim))


def _head(ops, dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(ops.GroupNorm(GROUPS, dim, eps=EPS), nn.SiLU(), ops.Conv2d(dim, out_dim, 3, padding=1))


class Encoder(nn.Module):
    def __init__(self, ops, config: VAEConfig, attention: str):
        super().__init__()
        dims = [config.dim * m for m in config.dim_mult]
        self.conv1 = ops.Conv2d(3, config.dim, 3, padding=1)
        blocks, in_dim = [], config.dim
        for level, out_dim in enumerate(dims):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(ops, in_dim, out_dim))
                in_dim = out_dim
            if level != len(dims) - 1:
                blocks.append(Resample(ops, out_dim, down=True))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(ops, dims[-1], attention)
        self.head = _head(ops, dims[-1], config.z_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return through_layers(self.head, self.middle(self.downsamples(self.conv1(x))))


class Decoder(nn.Module):
    def __init__(self, ops, config: VAEConfig, attention: str):
        super().__init__()
        dims = [config.dim * m for m in reversed(config.dim_mult)]
        self.conv1 = ops.Conv2d(config.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(ops, dims[0], attention)
        blocks, in_dim = [], dims[0]
        for level, out_dim in enumerate(dims):
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(ops, in_dim, out_dim))
                in_dim = out_dim
            if level != len(dims) - 1:
                blocks.append(Resample(ops, out_dim, down=False))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(ops, dims[-1], 3)

    def forward(self, z: torch.Tensor, should_cancel: CancelCheck | None = None) -> torch.Tensor:
        """`should_cancel()` is asked before each upsampling block (most of a decode's time)."""
        x = self.middle(self.conv1(z))
        for block in self.upsamples:
            stop_if_cancelled(should_cancel, "Decoding cancelled inside an image.")
            x = block(x)
        return through_layers(self.head, x)


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig, attention: str = VAE_ATTENTIONS[0], operations=None):
        super().__init__()
        ops = operations or TORCH_OPERATIONS
        self.config = config
        self.encoder = Encoder(ops, config, attention)
        self.conv1 = ops.Conv2d(config.z_dim * 2, config.z_dim * 2, 1)  # quant conv
        self.conv2 = ops.Conv2d(config.z_dim, config.z_dim, 1)  # post-quant conv
        self.decoder = Decoder(ops, config, attention)

    def _dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior mean [B, z, H/f, W/f] (unscaled) of images [B, 3, H, W] in [-1, 1]."""
        moments = self.conv1(self.encoder(images.to(self._dtype())))
        return moments[:, : self.config.z_dim]

    def decode(self, latents: torch.Tensor, should_cancel: CancelCheck | None = None) -> torch.Tensor:
        """Images in about [-1, 1] from unscaled latents; `should_cancel()` is asked between the
        decoder's blocks (raising GenerationCancelled)."""
        return self.decoder(self.conv2(latents.to(self._dtype())), should_cancel)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along a side."""
        return 2 ** (len(self.config.dim_mult) - 1)

    def decode_tiled(
        self,
        latents: torch.Tensor,
        tile: int = TILE_LATENT,
        overlap: int = TILE_OVERLAP,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """`decode` in overlapping tiles of `tile`² latent cells, blended linearly across the
        overlap: a fraction of the memory of a whole decode. The result differs slightly from a
        whole decode (each tile's convolutions and mid-block attention see only that tile).
        `should_cancel()` is asked before each tile (raising GenerationCancelled)."""
        b, _, h, w = latents.shape
        factor, overlap = self.scale_factor, min(overlap, tile // 2)
        out = latents.new_zeros((b, 3, h * factor, w * factor), dtype=torch.float32)
        total = latents.new_zeros((1, 1, h * factor, w * factor), dtype=torch.float32)
        for top in _tile_starts(h, tile, tile - overlap):
            for left in _tile_starts(w, tile, tile - overlap):
                stop_if_cancelled(should_cancel, "Decoding cancelled between two tiles.")
                part = latents[:, :, top : top + tile, left : left + tile]
                weight = _feather(part.shape[-2:], (top, left), (h, w), overlap, factor).to(out.device)
                rows = slice(top * factor, (top + part.shape[-2]) * factor)
                columns = slice(left * factor, (left + part.shape[-1]) * factor)
                out[:, :, rows, columns] += self.decode(part, should_cancel).float() * weight
                total[:, :, rows, columns] += weight
        return out / total


def _tile_starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, step)) + [size - tile]


def _feather(shape, start, whole, overlap: int, factor: int) -> torch.Tensor:
    """Blend weights [1,1,H,W] of one decoded tile: rising across the overlap on every side that
    has a neighbouring tile, 1 elsewhere."""
    ramps = []
    for length, begin, full in zip(shape, start, whole):
        position = torch.arange(length * factor, dtype=torch.float32)
        ramp = torch.ones_like(position)
        width = overlap * factor
        if begin > 0:
            ramp = torch.minimum(ramp, (position + 1) / (width + 1))
        if begin + length < full:
            ramp = torch.minimum(ramp, (length * factor - position) / (width + 1))
        ramps.append(ramp)
    return (ramps[0][:, None] * ramps[1][None, :])[None, None]


def module_keys(config: VAEConfig) -> list[str]:
    with torch.device("meta"):
        return list(AutoencoderKL(config).state_dict())


# ------------------------------------------------------------------ the standard (CompVis) naming
_RESIDUAL_NAMES = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "nin_shortcut",
}
_MIDDLE_NAMES = {"middle.0": "mid.block_1", "middle.2": "mid.block_2"}
_TOP_NAMES = {"conv1": "quant_conv", "conv2": "post_quant_conv"}


def _as_conv_1x1(tensors):
    """q/k/v or proj_out stored as 1×1 conv [C, C, 1, 1] or linear [C, C] weights -> conv weights."""
    joined = torch.cat([t.reshape(t.shape[0], -1) if t.dim() > 1 else t for t in tensors])
    return joined[..., None, None] if joined.dim() == 2 else joined


def _level_blocks(config: VAEConfig, per_level: int) -> list[tuple[int, str]]:
    """(level, "block.J" or "resample") for each position of downsamples/upsamples in order."""
    positions = []
    for level in range(len(config.dim_mult)):
        positions += [(level, f"block.{j}") for j in range(per_level)]
        if level != len(config.dim_mult) - 1:
            positions.append((level, "resample"))
    return positions


def standard_plan(config: VAEConfig, prefix: str = "") -> dict[str, TensorPlan]:
    """Module key -> CompVis/ComfyUI key(s) under `prefix`."""
    levels = len(config.dim_mult)
    rename: dict[str, str] = {
        "encoder.conv1": "encoder.conv_in",
        "decoder.conv1": "decoder.conv_in",
        "encoder.head.0": "encoder.norm_out",
        "encoder.head.2": "encoder.conv_out",
        "decoder.head.0": "decoder.norm_out",
        "decoder.head.2": "decoder.conv_out",
        **_TOP_NAMES,
    }
    for part, sequence, per_level, theirs, resample in (
        ("encoder", "downsamples", config.num_res_blocks, lambda lv: f"down.{lv}", "downsample"),
        ("decoder", "upsamples", config.num_res_blocks + 1, lambda lv: f"up.{levels - 1 - lv}", "upsample"),
    ):
        for middle, name in _MIDDLE_NAMES.items():
            for ours, standard in _RESIDUAL_NAMES.items():
                rename[f"{part}.{middle}.{ours}"] = f"{part}.{name}.{standard}"
        rename[f"{part}.middle.1.norm"] = f"{part}.mid.attn_1.norm"
        for index, (level, block) in enumerate(_level_blocks(config, per_level)):
            base = f"{part}.{theirs(level)}"
            if block == "resample":
                rename[f"{part}.{sequence}.{index}.resample.1"] = f"{base}.{resample}.conv"
                continue
            for ours, standard in _RESIDUAL_NAMES.items():
                rename[f"{part}.{sequence}.{index}.{ours}"] = f"{base}.{block}.{standard}"
    plan = {}
    for key in module_keys(config):
        module, param = key.rsplit(".", 1)
        if module.endswith("middle.1.to_qkv"):
            attention = f"{prefix}{module.split('.')[0]}.mid.attn_1"
            plan[key] = TensorPlan(tuple(f"{attention}.{p}.{param}" for p in "qkv"), _as_conv_1x1)
        elif module.endswith("middle.1.proj"):
            plan[key] = TensorPlan((f"{prefix}{module.split('.')[0]}.mid.attn_1.proj_out.{param}",), _as_conv_1x1)
        else:
            plan[key] = TensorPlan.copy(f"{prefix}{rename[module]}.{param}")
    return plan


def official_plan(config: VAEConfig) -> dict[str, TensorPlan]:
    return {key: TensorPlan.copy(key) for key in module_keys(config)}


# ------------------------------------------------------------------ architecture from the file
def _shape(checkpoint: Checkpoint, key: str) -> tuple[int, ...]:
    return required_shape(checkpoint, key, f"This is not a complete {MODEL_NAME}: select {EXPECTED_FILES}.")


def _check_latent_channels(checkpoint: Checkpoint, z_dim: int) -> None:
    if z_dim != 4:
        raise ModelFileError(
            f"{checkpoint.path} is a VAE with {z_dim} latent channels (SD3 / Flux family), but "
            f"FlashFace is SD 1.5-based and needs an {MODEL_NAME} with 4. Select {EXPECTED_FILES}."
        )


def _config_from_levels(
    checkpoint: Checkpoint, dim: int, level_widths: list[int], res_blocks: int, z_dim: int
) -> VAEConfig:
    _check_latent_channels(checkpoint, z_dim)
    if not level_widths or res_blocks == 0 or any(width % dim for width in level_widths):
        raise ModelFileError(
            f"{checkpoint.path} has encoder levels {level_widths} of base width {dim}; it is not an "
            f"{MODEL_NAME}. Select {EXPECTED_FILES}."
        )
    return VAEConfig(
        dim=dim, dim_mult=tuple(width // dim for width in level_widths), num_res_blocks=res_blocks, z_dim=z_dim
    )


def _official_config(checkpoint: Checkpoint) -> VAEConfig:
    """Levels = runs of residual blocks in encoder.downsamples, separated by resample blocks."""
    levels: list[list[int]] = [[]]
    index = 0
    while True:
        block = f"encoder.downsamples.{index}."
        if block + "resample.1.weight" in checkpoint:
            levels.append([])
        elif block + "residual.2.weight" in checkpoint:
            levels[-1].append(checkpoint.shape(block + "residual.2.weight")[0])
        else:
            break
        index += 1
    return _config_from_levels(
        checkpoint,
        _shape(checkpoint, "encoder.conv1.weight")[0],
        [level[-1] for level in levels if level],
        len(levels[0]),
        _shape(checkpoint, "conv2.weight")[0],
    )


def _standard_config(checkpoint: Checkpoint, prefix: str) -> VAEConfig:
    res_blocks = 0
    while f"{prefix}encoder.down.0.block.{res_blocks}.conv1.weight" in checkpoint:
        res_blocks += 1
    widths = []
    while (key := f"{prefix}encoder.down.{len(widths)}.block.0.conv2.weight") in checkpoint:
        widths.append(checkpoint.shape(key)[0])
    return _config_from_levels(
        checkpoint,
        _shape(checkpoint, prefix + "encoder.conv_in.weight")[0],
        widths,
        res_blocks,
        _shape(checkpoint, prefix + "post_quant_conv.weight")[0],
    )


def infer_layout(checkpoint: Checkpoint) -> Layout[VAEConfig]:
    """The layout of the official or the standard naming (a standard VAE inside a whole SD
    checkpoint: everything outside its prefix unused)."""
    if "encoder.conv1.weight" in checkpoint:
        config = _official_config(checkpoint)
        return Layout(config, official_plan(config))
    for prefix in STANDARD_PREFIXES:
        if prefix + "encoder.conv_in.weight" in checkpoint:
            config = _standard_config(checkpoint, prefix)
            return Layout(config, standard_plan(config, prefix), lambda key, prefix=prefix: not key.startswith(prefix))
    sample = ", ".join(sorted(checkpoint.keys())[:3])
    raise ModelFileError(
        f"{checkpoint.path} is not an {MODEL_NAME}: expected keys like encoder.conv1.weight (FlashFace) "
        f"or encoder.conv_in.weight (standard), found {sample or 'no tensors'}. "
        f"Select {EXPECTED_FILES}."
    )


def load_vae(
    source: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = VAE_ATTENTIONS[0],
    operations=None,
) -> AutoencoderKL:
    """Load an SD 1.x VAE (either naming) from a path or an open `Checkpoint`.

    GroupNorm parameters stay fp32. The official pipeline runs the VAE in fp32 (the default).
    `attention`: one of `VAE_ATTENTIONS` (see the module docstring); `operations`: the layer
    namespace (`ops.TORCH_OPERATIONS` by default).
    """
    return load_layout(
        lambda config: AutoencoderKL(config, attention, operations),
        source,
        infer_layout,
        what=MODEL_NAME,
        device=device,
        dtype=dtype,
    )
