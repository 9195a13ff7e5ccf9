"""The layers of the SD1.5 UNet as LDM (and ComfyUI's openaimodel) names them, built from an
operations namespace (`ops.TORCH_OPERATIONS` or ComfyUI's): timestep embedding, attention,
the GEGLU feed-forward, residual blocks, down/upsampling and FlashFace's input convolution over
latent + face-position mask. How they are wired, and FlashFace's reference attention, are in
`unet`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from .ops import through_layers

# How error messages name this network.
MODEL_NAME = "FlashFace UNet"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of integer timesteps, fp32 (official layout)."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float32, device=t.device).div(half))
    angles = torch.outer(t.float(), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


AttentionFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head scaled dot-product attention on [B, L, C] tensors (PyTorch's kernel), [B, Lq, C]
    out: the library's attention, and the signature of one given in its place."""
    b, lq, c = q.shape
    q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).reshape(b, lq, c)


class Attention(nn.Module):
    """Multi-head attention; q/k/v without bias, output projection with bias."""

    def __init__(self, ops, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ModelFileError(
                f"{MODEL_NAME}: {num_heads} attention heads do not divide the width {dim}; "
                "pass the right num_heads for this checkpoint."
            )
        self.num_heads = num_heads
        self.to_q = ops.Linear(dim, dim, bias=False)
        self.to_k = ops.Linear(context_dim, dim, bias=False)
        self.to_v = ops.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(ops.Linear(dim, dim))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attention: AttentionFunction | None = None,
    ) -> torch.Tensor:
        """Attention of x to `context` (x itself when None), with values from `value` (the context
        when None), through `attention` (the library's SDPA when None)."""
        context = x if context is None else context
        value = context if value is None else value
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(value), attention=attention)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        attention: AttentionFunction | None = None,
    ) -> torch.Tensor:
        """Attention on already projected q/k/v ([B, L, C]; `bias` an additive logit bias broadcast
        to [B, heads, Lq, Lk]), then the output projection. `attention`, a function of (q, k, v,
        heads) on [B, L, C] tensors, computes it instead of SDPA (no bias then)."""
        if attention is not None and bias is None:
            return self.to_out(attention(q, k, v, self.num_heads))
        return self.to_out(sdpa(q, k, v, self.num_heads, bias))


class GEGLU(nn.Module):
    def __init__(self, ops, dim: int, inner_dim: int):
        super().__init__()
        self.proj = ops.Linear(dim, inner_dim * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU, then a linear back to the width (LDM's ``ff.net``: its dropout is a no-op here)."""

    def __init__(self, ops, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(ops, dim, 4 * dim), nn.Dropout(0.0), ops.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class ResBlock(nn.Module):
    """GN-SiLU-conv, plus the projected time embedding, GN-SiLU-(dropout)-conv, plus the skip."""

    def __init__(self, ops, in_dim: int, embed_dim: int, out_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            ops.GroupNorm(32, in_dim, eps=1e-6), nn.SiLU(), ops.Conv2d(in_dim, out_dim, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(embed_dim, out_dim))
        self.out_layers = nn.Sequential(
            ops.GroupNorm(32, out_dim, eps=1e-6), nn.SiLU(), nn.Dropout(0.0), ops.Conv2d(out_dim, out_dim, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if in_dim == out_dim else ops.Conv2d(in_dim, out_dim, 1)

    def forward(self, x, emb):
        h = through_layers(self.in_layers, x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return through_layers(self.out_layers, h) + self.skip_connection(x)


@functools.cache
def latent_and_mask_conv_class(conv_class: type) -> type:
    """`conv_class` (the Conv2d of an operations namespace) as FlashFace's input conv."""

    class LatentAndMaskConv(conv_class):
        """The main path's input conv over latent + face-position mask, stored as LDM's conv_in over
        the latent channels (`weight`, `bias`: what SD1.5 LoRAs and merges patch) plus
        `mask_weight` [out, 1, k, k] for the mask channel. The two are joined into one weight
        before a single convolution, so the numbers are those of the published 5-channel conv."""

        def __init__(self, latent_channels: int, out_channels: int):
            super().__init__(latent_channels, out_channels, 3, padding=1)
            self.mask_weight = nn.Parameter(torch.empty(out_channels, 1, 3, 3))

        def _conv_forward(self, input, weight, bias):
            return super()._conv_forward(input, torch.cat([weight, self.mask_weight.to(weight)], 1), bias)

    return LatentAndMaskConv


class Downsample(nn.Module):
    """A stride-2 3x3 conv (n -> ceil(n/2))."""

    def __init__(self, ops, dim: int):
        super().__init__()
        self.op = ops.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest resize to the size of the skip tensor that comes next, then a 3x3 conv."""

    def __init__(self, ops, dim: int):
        super().__init__()
        self.conv = ops.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
