"""FlashFace reference UNet: the SD1.5 UNet plus FlashFace's reference network.

The published ``flashface.ckpt`` holds the main UNet (5-channel input conv: latent + face-position
mask; an extra self-attention ``self_attn_first`` (SA1) in every decoder and middle transformer
block), reference copies of the encoder and decoder, and a never-executed ``ref_middle``. The
main encoder/middle/decoder are stored twice (``encoder.*`` and ``ori_encoder.*`` ...). This
module keeps one copy of each and drops ``ref_middle``.

Module names are those of ComfyUI's (and LDM's) SD UNet -- ``time_embed``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``; ``in_layers``/``emb_layers``/``out_layers``/
``skip_connection`` in residual blocks; ``norm``/``proj_in``/``transformer_blocks``/``proj_out``
in attention sites; ``attn1``/``attn2``/``ff``/``norm1-3`` in transformer blocks -- so that
ComfyUI's LoRA key maps, model merging and block patches find the main path where they find
SD1.5's. FlashFace's own parts have names of their own: SA1 is ``reference_attn``, the reference
copies are ``reference_input_blocks`` and ``reference_output_blocks``. `official_key` maps a
module key to the published file's name of that tensor.

One model evaluation is two explicit steps, with no state kept between calls:

* `FlashFaceUNet.encode_references` runs the reference pass (reference encoder, the *main*
  middle block -- an official quirk --, reference decoder) on the reference latents and returns
  the LayerNorm-ed self-attention input tokens of every middle and decoder transformer block;
* `FlashFaceUNet.forward` runs the main pass, where each of those blocks adds, per row r with
  weight w_r, ``w_r * SA1(y, [y; references]) + (1 - w_r) * SA1(y)`` after its own self-attention.

Precision follows the official fp16 autocast run: GroupNorm and LayerNorm compute in fp32 (their
parameters stay fp32), convolutions, linears and attention in the compute dtype.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, ModelFileError
from .checkpoint import Checkpoint, Layout, TensorPlan, checkpoint_source, load_module
from .convert import compact_view
from .ops import (
    CASTING_OPERATIONS,
    STORAGE_ONLY_DTYPES,
    TORCH_OPERATIONS,
    at_least_fp32,
    compute_dtype_for,
    count_indexed,
    norm_at_least_fp32,
    required_shape,
    through_layers,
)

logger = logging.getLogger(__name__)

# How error messages name this network.
MODEL_NAME = "FlashFace UNet"
DEFAULT_NUM_HEADS = 8
# Lists stored twice in the published file (the module and its `ori_` alias).
ALIASED_LISTS = ("encoder", "middle", "decoder")
UNUSED_PREFIX = "ref_middle."



@dataclass(frozen=True)
class UNetConfig:
    """Architecture; the defaults are FlashFace SD1.5 (`flashface.ckpt`)."""

    dim: int = 320
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    num_attn_blocks: int = 1
    num_heads: int = 8
    context_dim: int = 768
    in_channels: int = 5  # latent + face-position mask
    ref_in_channels: int = 4
    out_channels: int = 4

    @property
    def embed_dim(self) -> int:
        return 4 * self.dim


@dataclass
class UNetSpeedOptions:
    """Switches of the reference-attention optimizations; all on by default, same numbers off.

    Each can be turned off to measure it (bench/bench_sampling_step.py) or to check it.
    """

    # Rows with weight exactly 0 get SA1(y) only: w*A + (1-w)*B0 = B0.
    skip_unweighted_rows: bool = True
    # Project the reference tokens through SA1's k/v once per call, not once per row, and share
    # the q/k/v projections of the row tokens between the two SA1 terms.
    project_references_once: bool = True
    # torch's scaled_dot_product_attention instead of an explicit softmax(q k^T / sqrt(d)) v.
    fused_attention: bool = True
    # Rows computed once while they are identical (`RowSpaces`): in a 3-branch call the two rows
    # with the positive prompt share the whole encoder, and every row shares the first block up to
    # its cross-attention.
    share_identical_rows: bool = True
    # Identical references (1-3 photos padded to four) go through the reference pass once; the main
    # pass attends to each once, with log(count) added to its logits: the same softmax.
    merge_identical_references: bool = True


@dataclass(frozen=True)
class ReferenceFeatures:
    """Result of the reference pass: per transformer block key, tokens [N', L_ref, C] of the N'
    distinct references, how many times each was given (`counts`), and whose each is (`owners`,
    the person of each distinct reference when there are several people, see `flashface.people`)."""

    tokens: Mapping[str, torch.Tensor]
    counts: tuple[int, ...] | None = None  # None: each once
    owners: tuple[int, ...] | None = None  # None: one person

    @property
    def num_references(self) -> int:
        return sum(self.counts) if self.counts is not None else next(iter(self.tokens.values())).shape[0]


# The row spaces of a main pass, coarsest first: rows with the same input (latent, mask,
# timestep); with the same input and text; with the same input, text and reference weight;
# all rows.
INPUT, TEXT, WEIGHT, ROWS = range(4)


def _groups(keys: Sequence) -> tuple[list[int], list[int]]:
    """(group of each key, first position of each group), groups in order of first appearance."""
    first: dict = {}
    group_of = [first.setdefault(key, len(first)) for key in keys]
    representatives = [0] * len(first)
    for position, group in reversed(list(enumerate(group_of))):
        representatives[group] = position
    return group_of, representatives


def _row_bytes(tensor: torch.Tensor) -> list:
    """Each row's bytes, to group equal rows (a tensor without data, on the meta device: each row
    its own)."""
    if tensor.device.type == "meta":
        return [object() for _ in range(tensor.shape[0])]
    flat = tensor.detach().to("cpu").reshape(tensor.shape[0], -1)
    rows = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)  # fresh strides, even for expanded rows
    return [row.view(torch.uint8).numpy().tobytes() for row in rows]


class RowSpaces:
    """Which rows of a call are identical up to where, so that each is computed once.

    Space INPUT holds one row per distinct (latent, mask, timestep): up to the first
    cross-attention everything depends on those alone. TEXT: per distinct input and text context:
    the encoder never reads references, so it depends on those alone. WEIGHT: per distinct input,
    text and reference weight: identical from there on. ROWS: the rows asked for. Tensors move to
    a finer space by gathering rows (`expand`); the equality is checked exactly, on the CPU.
    """

    def __init__(self, x, t, mask, context, weights, device):
        inputs, inputs_first = _groups(list(zip(_row_bytes(x), _row_bytes(mask), _row_bytes(t))))
        texts, texts_first = _groups(list(zip(inputs, _row_bytes(context))))
        unique, unique_first = _groups(list(zip(texts, weights.tolist())))
        self._first_rows = [inputs_first, texts_first, unique_first, list(range(len(unique)))]
        self.first_row = [torch.tensor(first, device=device) for first in self._first_rows]
        # finer space -> index into the next coarser space (None where both spaces are the same)
        maps = ([inputs[row] for row in texts_first], [texts[row] for row in unique_first], unique)
        self._coarser = [None if indices == list(range(len(indices))) else torch.tensor(indices, device=device)
                         for indices in maps]

    def representatives(self, space: int) -> torch.Tensor | slice:
        """For each row of `space`, one row of the call it stands for (an index on the device)."""
        return self.first_row[space]

    def representatives_on_cpu(self, space: int) -> list[int] | slice:
        return self._first_rows[space]

    def expand(self, tensor: torch.Tensor, from_space: int, to_space: int) -> torch.Tensor:
        for space in range(from_space, to_space):
            if self._coarser[space] is not None:
                tensor = tensor[self._coarser[space]]
        return tensor

    @classmethod
    def all_distinct(cls, rows: int) -> "RowSpaces":
        """Every row its own (no sharing)."""
        spaces = cls.__new__(cls)
        spaces.first_row = spaces._first_rows = [slice(None)] * 4
        spaces._coarser = [None] * 3
        return spaces


@dataclass
class _Pass:
    """What one pass through the blocks does with reference tokens and rows (built per call).

    A main pass starts in the coarsest row space and moves to a finer one where rows part ways:
    before the first cross-attention (text), before the first reference attention (weight), and
    at the end (all rows). `space` is where the tensors being computed are now.
    """

    speed: UNetSpeedOptions
    rows: RowSpaces
    emb: torch.Tensor  # [rows of the call, embed_dim]
    context: torch.Tensor  # [rows of the call, tokens, width]
    space: int = INPUT
    recorded: dict | None = None  # reference pass: collects the tokens
    references: ReferenceFeatures | None = None  # main pass: the tokens to attend to
    row_weights: torch.Tensor | None = None  # main pass: [rows of the call] reference weights (CPU)
    regions: torch.Tensor | None = None  # main pass, several people: [h, w] person of each latent cell
    _region_positions: dict = field(default_factory=dict)

    def embedding(self) -> torch.Tensor:
        return self.emb[self.rows.representatives(self.space)]

    def text(self) -> torch.Tensor:
        return self.context[self.rows.representatives(self.space)]

    def move(self, space: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Go on in `space` (if finer than the current one), with `tensors` expanded to it."""
        if space <= self.space:
            return list(tensors)
        moved = [self.rows.expand(tensor, self.space, space) for tensor in tensors]
        self.space = space
        return moved

    def in_current(self, tensor: torch.Tensor, space: int) -> torch.Tensor:
        """A tensor computed in `space` (e.g. a skip connection), expanded to the current space."""
        return self.rows.expand(tensor, space, self.space)

    def region_positions(self, grid: tuple[int, int]) -> list[torch.Tensor] | None:
        """For each person, the token positions of a grid (h', w') in their region (indices on the
        device), from the latent cells' regions sampled at nearest; None with one person."""
        if self.regions is None:
            return None
        if grid not in self._region_positions:
            labels = F.interpolate(self.regions[None, None].float(), size=grid, mode="nearest").flatten().long()
            self._region_positions[grid] = [(labels == person).nonzero().flatten().to(self.emb.device)
                                            for person in range(max(self.references.owners) + 1)]
        return self._region_positions[grid]

    def weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reference weight of each current row on its device, indices of the rows whose weight is
        not 0, or None when all are or when skipping them is switched off)."""
        weights = self.row_weights[self.rows.representatives_on_cpu(self.space)]
        device = self.emb.device
        if not self.speed.skip_unweighted_rows:
            return weights.to(device), None
        active = (weights != 0).nonzero().flatten()
        return weights.to(device), None if len(active) == len(weights) else active.to(device)


def _broadcasts_to(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    try:
        return tensor.dim() == target.dim() and torch.broadcast_shapes(tensor.shape, target.shape) == target.shape
    except RuntimeError:
        return False


BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")


@dataclass
class BlockAdditions:
    """What ComfyUI's samplers add to a main pass, applied where its SD UNet (openaimodel.UNetModel)
    applies them, so ControlNet, T2I-Adapter, FreeU and PatchModelAddDownscale work as on SD1.5:

    * `control`: residuals by place ("input", "middle", "output": lists used from the end, one per
      block, as ComfyUI's ControlNets and T2I-Adapters make them), added to the main pass only
      (the reference pass reads the faces as trained);
    * `transformer_options`: ComfyUI's, whose "patches" of the kinds in BLOCK_PATCHES are called
      as ComfyUI calls them, with "block" set to the block being run.
    """

    control: dict | None = None
    transformer_options: dict | None = None

    def __post_init__(self):
        # the lists are consumed as the blocks run: never those of the caller
        self.control = {name: list(values) for name, values in (self.control or {}).items()}
        patches = (self.transformer_options or {}).get("patches") or {}
        self.patches = {name: list(patches.get(name) or ()) for name in BLOCK_PATCHES}

    @property
    def active(self) -> bool:
        return any(self.control.values()) or any(self.patches.values())

    def enter(self, place: str, index: int) -> None:
        if self.transformer_options is not None:
            self.transformer_options["block"] = (place, index)

    def add_control(self, h: torch.Tensor, place: str) -> torch.Tensor:
        residuals = self.control.get(place)
        residual = residuals.pop() if residuals else None
        if residual is None:
            return h
        if not _broadcasts_to(residual, h):
            raise InvalidInputError(
                f"A ControlNet / T2I-Adapter residual of shape {tuple(residual.shape)} does not fit the FlashFace "
                f"UNet's {place} block output {tuple(h.shape)}: it was made for another model (use one for SD1.5).")
        return h + residual.to(h.dtype)

    def patch(self, name: str, *values):
        for patch in self.patches[name]:
            values = patch(*values, self.transformer_options)
            values = values if isinstance(values, tuple) else (values,)
        return values if len(values) > 1 else values[0]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of integer timesteps, fp32 (official layout)."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float32, device=t.device).div(half))
    angles = torch.outer(t.float(), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _multihead_attention(q, k, v, num_heads: int, fused: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(head_dim); q [B,Lq,C], k/v [B,Lk,C] -> [B,Lq,C].
    `bias`: an additive logit bias broadcast to [B, heads, Lq, Lk]."""
    b, lq, c = q.shape
    head_dim = c // num_heads
    q, k, v = (t.reshape(b, -1, num_heads, head_dim).transpose(1, 2) for t in (q, k, v))
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)).to(at_least_fp32(q.dtype)) * head_dim ** -0.5
        if bias is not None:
            scores = scores + bias.to(scores.dtype)
        out = torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, fused: bool = True,
                bias: torch.Tensor | None = None):
        context = x if context is None else context
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(context), fused, bias)

    def attend(self, q, k, v, fused: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention on already projected q/k/v, then the output projection."""
        return self.to_out(_multihead_attention(q, k, v, self.num_heads, fused, bias))


def _reference_bias(own_tokens: int, ref_tokens: int, counts: tuple[int, ...] | None, like: torch.Tensor):
    """Additive logit bias [1, 1, 1, keys] that makes attending to each distinct reference once the
    same as attending to all its copies (log of its count), or None when every count is 1."""
    if counts is None or all(count == 1 for count in counts):
        return None
    bias = torch.zeros(own_tokens + ref_tokens * len(counts), dtype=like.dtype, device=like.device)
    for index, count in enumerate(counts):
        start = own_tokens + index * ref_tokens
        bias[start:start + ref_tokens] = math.log(count)
    return bias.view(1, 1, 1, -1)


def _reference_attention(sa1: Attention, y: torch.Tensor, references: torch.Tensor, counts,
                         weights: torch.Tensor, active_rows: torch.Tensor | None,
                         speed: UNetSpeedOptions, owners: tuple[int, ...] | None = None,
                         positions: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per row r: w_r * SA1(y_r, [y_r; references]) + (1 - w_r) * SA1(y_r).

    `references` [N', L_ref, C] are shared by every row (flattened along the tokens, reference 1
    first); `counts` how many times each stands (see `_reference_bias`). `active_rows` indexes
    the rows whose term includes the reference attention (None = all rows). One person: every
    query attends to all references. Several people (`owners`: the person of each reference,
    `positions`: each person's token positions): a query in person p's region attends to p's
    references alone, and a position in no region gets SA1(y_r). Each person's queries are
    gathered and attend once (no masked logits: the work of one person, fused kernels usable).
    """
    fused = speed.fused_attention
    count, ref_len, width = references.shape
    ref_tokens = references.reshape(1, -1, width)
    rows = torch.arange(y.shape[0], device=y.device) if active_rows is None else active_rows
    active_y = y if active_rows is None else y[active_rows]
    n_active = active_y.shape[0]
    if speed.project_references_once:
        q, k, v = sa1.to_q(y), sa1.to_k(y), sa1.to_v(y)
        plain = sa1.attend(q, k, v, fused)
        if n_active:
            if active_rows is not None:
                q, k, v = q[active_rows], k[active_rows], v[active_rows]
            ref_k, ref_v = sa1.to_k(ref_tokens), sa1.to_v(ref_tokens)
    else:
        plain = sa1(y, fused=fused)
    if not n_active:
        return plain
    w = weights[rows].to(y.dtype).view(n_active, 1, 1)
    if positions is None:
        groups = [(None, list(range(count)))]
    else:
        groups = [(where, [index for index, owner in enumerate(owners) if owner == person])
                  for person, where in enumerate(positions) if len(where)]
    term = None if positions is None and active_rows is None else plain.clone()
    for where, mine in groups:
        tokens = (slice(None) if len(mine) == count
                  else torch.arange(count * ref_len, device=y.device).view(count, ref_len)[mine].flatten())
        bias = _reference_bias(y.shape[1], ref_len, None if counts is None else tuple(counts[i] for i in mine), y)
        if speed.project_references_once:
            keys = torch.cat([k, ref_k[:, tokens].expand(n_active, -1, -1)], 1)
            values = torch.cat([v, ref_v[:, tokens].expand(n_active, -1, -1)], 1)
            with_refs = sa1.attend(q if where is None else q[:, where], keys, values, fused, bias)
        else:
            context = torch.cat([active_y, ref_tokens[:, tokens].expand(n_active, -1, -1)], 1)
            with_refs = sa1(active_y if where is None else active_y[:, where], context, fused=fused, bias=bias)
        if term is None:  # every query of every row: no copy of `plain` needed
            return with_refs * w + (1 - w) * plain
        cells = (rows,) if where is None else (rows[:, None], where[None, :])
        term[cells] = with_refs * w + (1 - w) * plain[cells]
    return term


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


class TransformerBlock(nn.Module):
    """LN-SA, LN-CA, LN-GEGLU FFN; decoder/middle blocks also write or read reference tokens.

    `feature_key` is the block's path inside its list ("output_blocks.3.1.transformer_blocks.0"),
    shared by a reference-decoder block and its main-decoder twin; None for encoder blocks.
    """

    def __init__(self, ops, dim: int, context_dim: int, num_heads: int, reads_references: bool):
        super().__init__()
        self.feature_key: str | None = None
        self.norm1 = ops.LayerNorm(dim)
        self.attn1 = Attention(ops, dim, dim, num_heads)
        self.reference_attn = Attention(ops, dim, dim, num_heads) if reads_references else None
        self.norm2 = ops.LayerNorm(dim)
        self.attn2 = Attention(ops, dim, context_dim, num_heads)
        self.norm3 = ops.LayerNorm(dim)
        self.ff = FeedForward(ops, dim)

    def forward(self, x, run: _Pass, grid: tuple[int, int]):
        fused = run.speed.fused_attention
        y = norm_at_least_fp32(self.norm1, x)
        x = x + self.attn1(y, fused=fused)
        if self.feature_key is not None:
            if run.recorded is not None:
                run.recorded[self.feature_key] = y
            elif run.references is None:
                x = x + self.reference_attn(y, fused=fused)
            else:
                x, y = run.move(WEIGHT, x, y)
                weights, active_rows = run.weights()
                x = x + _reference_attention(
                    self.reference_attn, y, run.references.tokens[self.feature_key],
                    run.references.counts, weights, active_rows, run.speed, run.references.owners,
                    run.region_positions(grid))
        (x,) = run.move(TEXT, x)
        x = x + self.attn2(norm_at_least_fp32(self.norm2, x), run.text(), fused=fused)
        return x + self.ff(norm_at_least_fp32(self.norm3, x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv to tokens, transformer blocks, 1x1 conv back, plus the input."""

    def __init__(self, ops, dim: int, config: UNetConfig, reads_references: bool):
        super().__init__()
        self.norm = ops.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = ops.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([
            TransformerBlock(ops, dim, config.context_dim, config.num_heads, reads_references)
            for _ in range(config.num_attn_blocks)
        ])
        self.proj_out = ops.Conv2d(dim, dim, 1)

    def forward(self, x, run: _Pass):
        entered = run.space
        _, c, h, w = x.shape
        tokens = self.proj_in(norm_at_least_fp32(self.norm, x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, run, (h, w))
        return self.proj_out(tokens.transpose(1, 2).reshape(-1, c, h, w)) + run.in_current(x, entered)


class ResBlock(nn.Module):
    """GN-SiLU-conv, plus the projected time embedding, GN-SiLU-(dropout)-conv, plus the skip."""

    def __init__(self, ops, in_dim: int, embed_dim: int, out_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(32, in_dim, eps=1e-6), nn.SiLU(),
                                       ops.Conv2d(in_dim, out_dim, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(embed_dim, out_dim))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, out_dim, eps=1e-6), nn.SiLU(), nn.Dropout(0.0),
                                        ops.Conv2d(out_dim, out_dim, 3, padding=1))
        self.skip_connection = nn.Identity() if in_dim == out_dim else ops.Conv2d(in_dim, out_dim, 1)

    def forward(self, x, emb):
        h = through_layers(self.in_layers, x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return through_layers(self.out_layers, h) + self.skip_connection(x)


@functools.lru_cache(maxsize=None)
def _latent_and_mask_conv_class(conv_class: type) -> type:
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


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks (LDM's TimestepEmbedSequential):
    its layers in order, each given what it takes."""

    def forward(self, x, run: _Pass, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, run.embedding())
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, run)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


def _attention_levels(config: UNetConfig) -> list[bool]:
    return [2.0 ** -level in config.attn_scales for level in range(len(config.dim_mult))]


def build_input_blocks(ops, config: UNetConfig, with_face_mask: bool) -> nn.ModuleList:
    """LDM's input_blocks; the main path's input conv also reads the face-position mask."""
    dim, levels = config.dim, len(config.dim_mult)
    conv_in = (_latent_and_mask_conv_class(ops.Conv2d)(config.in_channels - 1, dim) if with_face_mask
               else ops.Conv2d(config.ref_in_channels, dim, 3, padding=1))
    layers = nn.ModuleList([UNetBlock([conv_in])])
    width = dim
    for level, (mult, has_attention) in enumerate(zip(config.dim_mult, _attention_levels(config))):
        for _ in range(config.num_res_blocks):
            block = [ResBlock(ops, width, config.embed_dim, dim * mult)]
            width = dim * mult
            if has_attention:
                block.append(SpatialTransformer(ops, width, config, reads_references=False))
            layers.append(UNetBlock(block))
        if level != levels - 1:
            layers.append(UNetBlock([Downsample(ops, width)]))
    return layers


def _skip_widths(config: UNetConfig) -> list[int]:
    """Channels of every encoder output in order (conv_in, blocks, downsamplers)."""
    widths = [config.dim]
    for level, mult in enumerate(config.dim_mult):
        widths += [config.dim * mult] * config.num_res_blocks
        if level != len(config.dim_mult) - 1:
            widths.append(config.dim * mult)
    return widths


def build_middle_block(ops, config: UNetConfig, reads_references: bool) -> UNetBlock:
    width = config.dim * config.dim_mult[-1]
    return UNetBlock([
        ResBlock(ops, width, config.embed_dim, width),
        SpatialTransformer(ops, width, config, reads_references),
        ResBlock(ops, width, config.embed_dim, width),
    ])


def build_output_blocks(ops, config: UNetConfig, reads_references: bool) -> nn.ModuleList:
    skips = _skip_widths(config)
    layers = nn.ModuleList()
    width = config.dim * config.dim_mult[-1]
    attention = _attention_levels(config)
    for level in reversed(range(len(config.dim_mult))):
        out_width = config.dim * config.dim_mult[level]
        for j in range(config.num_res_blocks + 1):
            block = [ResBlock(ops, width + skips.pop(), config.embed_dim, out_width)]
            width = out_width
            if attention[level]:
                block.append(SpatialTransformer(ops, width, config, reads_references))
            if level != 0 and j == config.num_res_blocks:
                block.append(Upsample(ops, width))
            layers.append(UNetBlock(block))
    return layers


def _name_feature_blocks(layers: nn.Module, list_name: str) -> None:
    for path, module in layers.named_modules():
        if isinstance(module, TransformerBlock):
            module.feature_key = f"{list_name}.{path}"


class FlashFaceUNet(nn.Module):
    """The FlashFace reference UNet (one copy of every aliased module, no `ref_middle`)."""

    def __init__(self, config: UNetConfig, operations=None):
        super().__init__()
        ops = operations or TORCH_OPERATIONS
        self.config = config
        self.speed = UNetSpeedOptions()
        # The dtype layers compute in when it differs from the stored weights' (ComfyUI's name:
        # its model management reads it to estimate the memory of cast weights); None: the weights'.
        self.manual_cast_dtype: torch.dtype | None = None
        self.time_embed = nn.Sequential(
            ops.Linear(config.dim, config.embed_dim), nn.SiLU(), ops.Linear(config.embed_dim, config.embed_dim))
        self.input_blocks = build_input_blocks(ops, config, with_face_mask=True)
        self.middle_block = build_middle_block(ops, config, reads_references=True)
        self.output_blocks = build_output_blocks(ops, config, reads_references=True)
        out_width = config.dim * config.dim_mult[0]
        self.out = nn.Sequential(ops.GroupNorm(32, out_width, eps=1e-6), nn.SiLU(),
                                 ops.Conv2d(out_width, config.out_channels, 3, padding=1))
        # The reference network: copies of the encoder and decoder (the middle block is shared).
        self.reference_input_blocks = build_input_blocks(ops, config, with_face_mask=False)
        self.reference_output_blocks = build_output_blocks(ops, config, reads_references=False)
        _name_feature_blocks(self.middle_block, "middle_block")
        _name_feature_blocks(self.output_blocks, "output_blocks")
        _name_feature_blocks(self.reference_output_blocks, "output_blocks")

    @property
    def weight_dtype(self) -> torch.dtype:
        """Dtype the (non-norm) weights are stored in."""
        return self.out[2].weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of activations: `manual_cast_dtype` if set, else the weights' dtype."""
        return self.manual_cast_dtype or self.weight_dtype

    def _embed_time(self, t, rows: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(rows)
        if t.shape != (rows,):
            raise InvalidInputError(f"{MODEL_NAME}: timesteps of shape {tuple(t.shape)} for {rows} rows; "
                                    f"give one timestep per row or a single one.")
        return self.time_embed(timestep_embedding(t, self.config.dim).to(self.compute_dtype))

    def _run(self, x, input_blocks, output_blocks, run: _Pass, with_head: bool,
             additions: BlockAdditions | None = None):
        additions = additions or BlockAdditions()
        skips = []
        for index, block in enumerate(input_blocks):
            additions.enter("input", index)
            x = additions.add_control(block(x, run), "input")
            x = additions.patch("input_block_patch", x)
            skips.append((x, run.space))
            x = additions.patch("input_block_patch_after_skip", x)
        additions.enter("middle", 0)
        x = additions.add_control(self.middle_block(x, run), "middle")
        for index, block in enumerate(output_blocks):
            additions.enter("output", index)
            skip, space = skips.pop()
            skip = additions.add_control(run.in_current(skip, space), "output")
            x, skip = additions.patch("output_block_patch", x, skip)
            x = torch.cat([x, skip], dim=1)
            x = block(x, run, skips[-1][0].shape[-2:] if skips else None)
        if not with_head:
            return None
        (x,) = run.move(ROWS, x)
        return through_layers(self.out, x)

    @torch.no_grad()
    def encode_references(self, reference_latents: torch.Tensor, t, reference_context: torch.Tensor,
                          owners: Sequence[int] | None = None) -> ReferenceFeatures:
        """The reference pass on latents [N,4,r,r] at timestep t (a scalar, or [N]).

        `reference_context` [N,77,C] is its cross-attention context (officially the negative
        prompt). Runs the reference encoder, the main middle block and the reference decoder.
        Identical references (same latent, context and timestep, and of the same person) are
        computed once (`UNetSpeedOptions.merge_identical_references`). `owners`: with several
        people, the person (0, 1, ...) of each reference (`flashface.people.PeopleLayout.owners`).
        """
        n = reference_latents.shape[0]
        if reference_latents.dim() != 4 or reference_latents.shape[1] != self.config.ref_in_channels:
            raise InvalidInputError(f"{MODEL_NAME}: reference latents must be [N,{self.config.ref_in_channels},r,r], "
                                    f"got {tuple(reference_latents.shape)}.")
        if reference_context.shape[0] != n:
            raise InvalidInputError(f"{MODEL_NAME}: {reference_context.shape[0]} reference contexts for {n} references.")
        if owners is not None:
            owners = tuple(int(owner) for owner in owners)
            if len(owners) != n or sorted(set(owners)) != list(range(max(owners) + 1)):
                raise InvalidInputError(f"{MODEL_NAME}: the owners of {n} references must be one person number per "
                                        f"reference, numbered from 0 without gaps; got {list(owners)}.")
        device, dtype = reference_latents.device, self.compute_dtype
        t = torch.as_tensor(t).expand(n) if torch.as_tensor(t).dim() == 0 else torch.as_tensor(t)
        counts = None
        if self.speed.merge_identical_references:
            group_of, first = _groups(list(zip(_row_bytes(reference_latents), _row_bytes(reference_context),
                                               _row_bytes(t), owners or [0] * n)))
            if len(first) < n:
                counts = tuple(group_of.count(group) for group in range(len(first)))
                keep = torch.tensor(first, device=device)
                reference_latents, reference_context, t = reference_latents[keep], reference_context[keep], t[first]
                owners = None if owners is None else tuple(owners[index] for index in first)
        rows = len(reference_latents)
        run = _Pass(self.speed, RowSpaces.all_distinct(rows), self._embed_time(t, rows, device),
                    reference_context.to(dtype), recorded={})
        self._run(reference_latents.to(dtype), self.reference_input_blocks, self.reference_output_blocks, run,
                  with_head=False)
        return ReferenceFeatures(tokens=run.recorded, counts=counts, owners=owners)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t, context: torch.Tensor, mask: torch.Tensor | None,
                references: ReferenceFeatures | None, reference_weights,
                additions: BlockAdditions | None = None, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise [R,4,h,w] for latents x [R,4,h,w] (returned in x's dtype).

        t: [R] or scalar; context [R,77,C]; mask [R,h,w] face-position channel (None = zeros);
        reference_weights: [R] per-row weight of the reference attention, or a scalar for all rows (best
        given on the CPU).
        Rows with weight 0 still get SA1(y): they are not plain SD. With `references` None
        every weight must be 0. Rows that are identical are computed once as far as they stay
        identical (`RowSpaces`, `UNetSpeedOptions.share_identical_rows`). With references of several
        people, `regions` [h, w] gives the person whose references each latent cell reads
        (`flashface.people.PeopleLayout.regions`, NO_REGION: none), the same for every row.
        """
        rows, dtype = x.shape[0], self.compute_dtype
        if x.dim() != 4 or x.shape[1] != self.config.in_channels - 1:
            raise InvalidInputError(f"{MODEL_NAME}: latents must be [R,{self.config.in_channels - 1},h,w], got {tuple(x.shape)}.")
        if context.shape[0] != rows:
            raise InvalidInputError(f"{MODEL_NAME}: {context.shape[0]} text contexts for {rows} latent rows.")
        if mask is None:
            mask = x.new_zeros((rows, *x.shape[2:]))
        if tuple(mask.shape) != (rows, *x.shape[2:]):
            raise InvalidInputError(f"{MODEL_NAME}: mask of shape {tuple(mask.shape)} for latents {tuple(x.shape)}; "
                                    "give one [h,w] mask per row.")
        # The weights stay on the CPU (which rows attend to the references is decided there), so
        # no step waits for the device; only the multiplication happens there.
        weights = torch.as_tensor(0.0 if reference_weights is None else reference_weights, dtype=torch.float32).cpu()
        weights = weights.expand(rows) if weights.dim() == 0 else weights
        if weights.shape != (rows,):
            raise InvalidInputError(f"{MODEL_NAME}: {tuple(weights.shape)} reference weights for {rows} rows.")
        if references is None and bool((weights != 0).any()):
            raise InvalidInputError(f"{MODEL_NAME}: nonzero reference weights need reference features.")
        self._check_regions(regions, references, x.shape[2:])
        emb = self._embed_time(t, rows, x.device)
        t = torch.as_tensor(t).expand(rows) if torch.as_tensor(t).dim() == 0 else torch.as_tensor(t)
        # Control residuals and block patches treat each row on its own: no rows are shared then.
        spaces = (RowSpaces(x, t, mask, context, weights, x.device)
                  if self.speed.share_identical_rows and not (additions and additions.active)
                  else RowSpaces.all_distinct(rows))
        run = _Pass(self.speed, spaces, emb, context.to(dtype), references=references, row_weights=weights,
                    regions=None if regions is None else regions.cpu())
        inputs = torch.cat([x, mask[:, None].to(x.dtype)], 1).to(dtype)[spaces.representatives(INPUT)]
        out = self._run(inputs, self.input_blocks, self.output_blocks, run, with_head=True, additions=additions)
        return out.to(x.dtype)


    @staticmethod
    def _check_regions(regions: torch.Tensor | None, references: ReferenceFeatures | None, size) -> None:
        owners = references.owners if references is not None else None
        if regions is None and owners is None:
            return
        if regions is None or owners is None:
            raise InvalidInputError(f"{MODEL_NAME}: references of several people need the regions of the image that read "
                                    "each (and regions need references of several people).")
        if tuple(regions.shape) != tuple(size) or regions.dtype != torch.long:
            raise InvalidInputError(f"{MODEL_NAME}: regions must be one int64 person number per latent cell, "
                                    f"{list(size)}; got {regions.dtype} {list(regions.shape)}.")
        if int(regions.min()) < -1 or int(regions.max()) > max(owners):
            raise InvalidInputError(f"{MODEL_NAME}: regions name a person with no references (people 0 to {max(owners)} "
                                    "have some; -1 is no region).")


def _require(checkpoint: Checkpoint, key: str) -> tuple[int, ...]:
    return required_shape(checkpoint, key, f"This is not a {MODEL_NAME} checkpoint: select the FlashFace UNet file "
                                           f"(flashface.ckpt or flashface.safetensors) in that slot.")


def infer_config(checkpoint: Checkpoint, num_heads: int | None = None) -> UNetConfig:
    """Architecture from key names and shapes; num_heads: argument > metadata > 8."""
    dim = _require(checkpoint, "time_embedding.0.weight")[1]
    levels: list[list[tuple[int, bool]]] = [[]]
    index = 1
    while True:
        if f"encoder.{index}.weight" in checkpoint:  # downsampling conv ends a level
            levels.append([])
        elif f"encoder.{index}.0.layer1.2.weight" in checkpoint:
            width = checkpoint.shape(f"encoder.{index}.0.layer1.2.weight")[0]
            levels[-1].append((width, f"encoder.{index}.1.norm1.weight" in checkpoint))
        else:
            break
        index += 1
    layouts = {(len(blocks), len({w for w, _ in blocks}), len({a for _, a in blocks})) for blocks in levels}
    if not levels[0] or len(layouts) != 1 or next(iter(layouts))[1:] != (1, 1):
        raise ModelFileError(f"{checkpoint.path}: the encoder layout is not one a {MODEL_NAME} has; "
                             f"select the FlashFace UNet file.")
    attn_blocks = count_indexed(checkpoint, "middle.1.blocks.{}.norm1.weight")
    if num_heads is None:
        stored = checkpoint.metadata().get("num_heads")
        num_heads = int(stored) if stored else DEFAULT_NUM_HEADS
    return UNetConfig(
        dim=dim,
        dim_mult=tuple(blocks[0][0] // dim for blocks in levels),
        num_res_blocks=len(levels[0]),
        attn_scales=tuple(2.0 ** -level for level, blocks in enumerate(levels) if blocks[0][1]),
        num_attn_blocks=attn_blocks,
        num_heads=num_heads,
        context_dim=_require(checkpoint, "middle.1.blocks.0.cross_attn.k.weight")[1],
        in_channels=_require(checkpoint, "encoder.0.weight")[1],
        ref_in_channels=_require(checkpoint, "ref_encoder.0.weight")[1],
        out_channels=_require(checkpoint, "head.2.weight")[0],
    )


# Module list names -> the published file's.
OFFICIAL_LISTS = {"time_embed": "time_embedding", "input_blocks": "encoder", "middle_block": "middle",
                  "output_blocks": "decoder", "out": "head", "reference_input_blocks": "ref_encoder",
                  "reference_output_blocks": "ref_decoder"}
# Module path pieces -> the published file's, in this order (each piece between dots).
OFFICIAL_PIECES = (
    (".0.op.", "."),  # a downsampling conv is an entry of its own in the file
    (".conv.", ".1."),  # the upsampling conv sits at index 1 of the file's nn.Sequential
    (".in_layers.", ".layer1."), (".emb_layers.", ".embedding."), (".out_layers.", ".layer2."),
    (".skip_connection.", ".shortcut."),
    (".norm.", ".norm1."), (".proj_in.", ".conv1."), (".proj_out.", ".conv2."), (".transformer_blocks.", ".blocks."),
    (".reference_attn.", ".self_attn.self_attn_first."), (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."),
    (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."), (".ff.net.", ".ffn."),
)


def official_key(module_key: str) -> str:
    """The published file's name of a module tensor ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    -> "encoder.1.1.blocks.0.self_attn.q.weight")."""
    head, rest = module_key.split(".", 1)
    rest = "." + rest
    if head.endswith("input_blocks") and rest.startswith(".0.0."):  # the input conv is an entry of its own too
        rest = rest[len(".0"):]
    for piece, official in OFFICIAL_PIECES:
        rest = rest.replace(piece, official)
    return OFFICIAL_LISTS[head] + rest


CONV_IN_WEIGHT = "input_blocks.0.0.weight"
CONV_IN_MASK_WEIGHT = "input_blocks.0.0.mask_weight"  # the published conv_in's last input channel


def _file_keys(module_key: str) -> tuple[str, ...]:
    key = official_key(CONV_IN_WEIGHT if module_key == CONV_IN_MASK_WEIGHT else module_key)
    if key.split(".", 1)[0] in ALIASED_LISTS:
        return (key, "ori_" + key)
    return (key,)


def unused_middle_file_key(middle_block_key: str) -> str:
    """The published name of a tensor of the never-run `ref_middle`, from its key in a middle block."""
    return UNUSED_PREFIX + official_key("middle_block." + middle_block_key).split(".", 1)[1]


def checkpoint_plan(config: UNetConfig) -> dict[str, TensorPlan]:
    """Module key -> file keys (`official_key`) for a UNet of `config`: aliased lists read both
    copies (checked equal), others one; conv_in's latent and mask channels are cut from the
    published 5-channel weight."""
    latent_channels = config.in_channels - 1
    with torch.device("meta"):
        module_keys = list(FlashFaceUNet(config).state_dict())
    plans = {}
    for key in module_keys:
        file_keys = _file_keys(key)
        plan = TensorPlan.aliased(*file_keys) if len(file_keys) > 1 else TensorPlan.copy(file_keys[0])
        if key == CONV_IN_WEIGHT:
            plan = plan.narrowed(1, 0, latent_channels)
        elif key == CONV_IN_MASK_WEIGHT:
            plan = plan.narrowed(1, latent_channels, 1)
        plans[key] = plan
    return plans


def checkpoint_key_shapes(config: UNetConfig) -> dict[str, torch.Size]:
    """Keys and shapes of a file in the published layout (aliases and `ref_middle` included)."""
    with torch.device("meta"):
        model = FlashFaceUNet(config)
        unused_middle = build_middle_block(TORCH_OPERATIONS, config, reads_references=False)
    shapes = {file_key: tensor.shape for key, tensor in model.state_dict().items() for file_key in _file_keys(key)
              if key != CONV_IN_MASK_WEIGHT}
    for file_key in _file_keys(CONV_IN_WEIGHT):
        shapes[file_key] = torch.Size((config.dim, config.in_channels, 3, 3))
    shapes.update({unused_middle_file_key(key): t.shape for key, t in unused_middle.state_dict().items()})
    return shapes


def infer_layout(checkpoint: Checkpoint, num_heads: int | None = None) -> Layout:
    """The layout of the published file (or a compact one seen through `compact_view`): the
    never-executed `ref_middle` unused."""
    config = infer_config(checkpoint, num_heads)
    return Layout(config, checkpoint_plan(config), lambda key: key.startswith(UNUSED_PREFIX))


def load_unet(source: str | os.PathLike | Checkpoint, *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, operations=None, num_heads: int | None = None) -> FlashFaceUNet:
    """Load the FlashFace UNet from a path or an open `Checkpoint` into `dtype` on `device`.

    Norm parameters stay fp32. Each aliased tensor pair is checked equal and kept once;
    `ref_middle.*` is never read. A compact file (`convert.convert_unet`) loads the same way. Weights stored in fp8 (`STORAGE_ONLY_DTYPES`) are cast per layer
    to the compute dtype (`compute_dtype_for(device)`, the `manual_cast_dtype`), by the library's
    casting layers unless `operations` (ComfyUI's cast layers) are given.
    """
    storage_only = dtype in STORAGE_ONLY_DTYPES
    with checkpoint_source(source) as opened:
        checkpoint = compact_view(opened)
        layout = infer_layout(checkpoint, num_heads)
        ops = operations or (CASTING_OPERATIONS if storage_only else TORCH_OPERATIONS)
        model = load_module(lambda: FlashFaceUNet(layout.config, ops), checkpoint, layout.plan, what=MODEL_NAME,
                            device=device, dtype=dtype, ignore=layout.unused)
    if storage_only:
        model.manual_cast_dtype = compute_dtype_for(device)
    logger.info("loaded %s %s from %s", MODEL_NAME, layout.config, checkpoint.path)
    return model
