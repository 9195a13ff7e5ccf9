"""One pass through the UNet's blocks and the blocks that take it: the transformer block (with
FlashFace's reference attention after its self-attention), the attention site around it and the
block container (LDM's TimestepEmbedSequential)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContractError
from .block_additions import BlockAdditions
from .ops import host_to_device, norm_at_least_fp32
from .reference_attention import ReferenceFeatures, reference_attention
from .row_plan import INPUT, TEXT, WEIGHT, RowSpaces, take_rows
from .unet_blocks import MODEL_NAME, Attention, AttentionFunction, FeedForward, ResBlock, Upsample


@dataclass
class UNetPass:
    """One pass through the blocks (built per call): which rows are computed as one so far
    (`rows`, `space`: a pass starts in the coarsest space and moves to a finer one where rows part
    ways -- before the first cross-attention, before the first reference attention, at the end),
    the time embedding and text of the call's rows, and what the reference-reading blocks do:
    record their tokens (the reference pass) or read `references` (the main pass)."""

    rows: RowSpaces
    emb: torch.Tensor  # [rows of the call, embed_dim]
    context: torch.Tensor  # [rows of the call, tokens, width]
    space: int = INPUT
    additions: BlockAdditions = field(default_factory=BlockAdditions)  # the main pass's; none in the reference pass
    attention: AttentionFunction | None = None  # what self- and cross-attention compute with (None: SDPA)
    recorded: dict | None = None  # reference pass: collects the tokens
    references: ReferenceFeatures | None = None  # main pass: the tokens to attend to
    regions: torch.Tensor | None = None  # main pass, several people: [h, w] person of each latent cell (CPU)
    _region_positions: dict = field(default_factory=dict)

    def embedding(self) -> torch.Tensor:
        return take_rows(self.emb, self.rows.representatives(self.space))

    def text(self) -> torch.Tensor:
        return take_rows(self.context, self.rows.representatives(self.space))

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
        if self.regions is None or self.references is None or self.references.owners is None:
            return None
        if grid not in self._region_positions:
            labels = F.interpolate(self.regions[None, None].float(), size=grid, mode="nearest").flatten().long()
            self._region_positions[grid] = [
                host_to_device((labels == person).nonzero().flatten(), self.emb.device)
                for person in range(max(self.references.owners) + 1)
            ]
        return self._region_positions[grid]


class TransformerBlock(nn.Module):
    """LN-SA, LN-CA, LN-GEGLU FFN; middle and decoder blocks also record or read reference tokens.

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

    def forward(self, x: torch.Tensor, run: UNetPass, grid: tuple[int, int]) -> torch.Tensor:
        additions = run.additions
        y = norm_at_least_fp32(self.norm1, x)
        if additions.patches_attention:
            x = x + self._patched_attention("attn1", self.attn1, y, None, run)
        else:
            x = x + self.attn1(y, attention=run.attention)
        if self.feature_key is not None:
            if run.recorded is not None:  # the reference pass
                run.recorded[self.feature_key] = y
            elif self.reference_attn is None:
                raise ContractError(
                    f"{MODEL_NAME}: {self.feature_key} of the reference network records tokens, it reads none."
                )
            elif run.references is None:  # every weight is 0
                x = x + self.reference_attn(y)
            else:
                x, y = run.move(WEIGHT, x, y)
                x = x + reference_attention(
                    self.reference_attn,
                    y,
                    run.references.tokens[self.feature_key],
                    run.rows.weights_of(run.space),
                    run.references.copies,
                    run.references.owners,
                    run.region_positions(grid),
                )
        for patch in additions.attention_patches["middle_patch"]:
            x = patch(x, additions.extra_options(self.attn1.num_heads, x.shape[-1] // self.attn1.num_heads))
        (x,) = run.move(TEXT, x)
        if additions.patches_attention:
            x = x + self._patched_attention("attn2", self.attn2, norm_at_least_fp32(self.norm2, x), run.text(), run)
        else:
            x = x + self.attn2(norm_at_least_fp32(self.norm2, x), run.text(), attention=run.attention)
        return x + self.ff(norm_at_least_fp32(self.norm3, x))

    @staticmethod
    def _patched_attention(
        kind: str, attention: Attention, n: torch.Tensor, context: torch.Tensor | None, run: UNetPass
    ) -> torch.Tensor:
        """Self- (attn1, `context` None) or cross-attention (attn2) through ComfyUI's attention
        patches as its SD1.5 transformer blocks call them: the input patches on (query input,
        context, value), a replacement of the attention on projected q/k/v, the output patches."""
        additions = run.additions
        extra = additions.extra_options(attention.num_heads, n.shape[-1] // attention.num_heads)
        value = None
        input_patches = additions.attention_patches[f"{kind}_patch"]
        if input_patches:
            context = n if context is None else context
            value = context
            for patch in input_patches:
                n, context, value = patch(n, context, value, extra)
        replacement = additions.replacement(kind)
        if replacement is not None:
            context = n if context is None else context
            value = context if value is None else value
            q, k, v = attention.to_q(n), attention.to_k(context), attention.to_v(value)
            n = attention.to_out(replacement(q, k, v, extra))
        else:
            n = attention(n, context, value, attention=run.attention)
        for patch in additions.attention_patches[f"{kind}_output_patch"]:
            n = patch(n, extra)
        return n


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv to tokens, transformer blocks, 1x1 conv back, plus the input."""

    def __init__(self, ops, dim: int, context_dim: int, num_heads: int, depth: int, reads_references: bool):
        super().__init__()
        self.norm = ops.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = ops.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(ops, dim, context_dim, num_heads, reads_references) for _ in range(depth)]
        )
        self.proj_out = ops.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, run: UNetPass) -> torch.Tensor:
        entered = run.space
        _, c, h, w = x.shape
        run.additions.set_option("activations_shape", list(x.shape))
        tokens = self.proj_in(norm_at_least_fp32(self.norm, x)).flatten(2).transpose(1, 2)
        for index, block in enumerate(self.transformer_blocks):
            run.additions.set_option("block_index", index)
            tokens = block(tokens, run, (h, w))
        options = run.additions.transformer_options
        if options is not None and "transformer_index" in options:
            options["transformer_index"] += 1
        return self.proj_out(tokens.transpose(1, 2).reshape(-1, c, h, w)) + run.in_current(x, entered)


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks (LDM's TimestepEmbedSequential):
    its layers in order, each given what it takes."""

    def forward(self, x, run: UNetPass, upsample_size=None):
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
