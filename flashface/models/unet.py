"""FlashFace reference UNet: the SD1.5 UNet plus FlashFace's reference network.

Module names are those of ComfyUI's (and LDM's) SD UNet -- ``time_embed``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``; ``in_layers``/``emb_layers``/``out_layers``/
``skip_connection`` in residual blocks; ``norm``/``proj_in``/``transformer_blocks``/``proj_out``
in attention sites; ``attn1``/``attn2``/``ff``/``norm1-3`` in transformer blocks -- so that
ComfyUI's LoRA key maps, model merging and block patches find the main path where they find
SD1.5's. FlashFace's own parts have names of their own: the extra self-attention of every
middle and decoder transformer block (SA1) is ``reference_attn``, the reference copies of the
encoder and decoder are ``reference_input_blocks`` and ``reference_output_blocks``. The layers
are in `unet_blocks`, the transformer blocks and the pass through the blocks in `unet_pass`, what
ComfyUI adds to the main pass in `block_additions`, the reference attention in
`reference_attention`, reading the published file in `unet_loading`.

One model evaluation is two explicit steps, with no state kept between calls:

* `FlashFaceUNet.encode_references` runs the reference pass (reference encoder, the *main*
  middle block -- an official quirk --, reference decoder) on the reference latents and returns
  the LayerNorm-ed self-attention input tokens of every middle and decoder transformer block;
* `FlashFaceUNet.forward` runs the main pass, where each of those blocks adds the reference
  attention after its own self-attention. The caller says how its rows are laid out (a
  `row_plan.RowPlan`): rows are computed once for as long as they are identical.

Precision follows the official fp16 autocast run: GroupNorm and LayerNorm compute in fp32 (their
parameters stay fp32), convolutions, linears and attention in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..errors import ContractError
from .block_additions import BlockAdditions
from .ops import TORCH_OPERATIONS, through_layers
from .reference_attention import ReferenceFeatures
from .row_plan import INPUT, ROWS, RowPlan, RowSpaces, take_rows
from .unet_blocks import (
    MODEL_NAME,
    AttentionFunction,
    Downsample,
    ResBlock,
    Upsample,
    latent_and_mask_conv_class,
    timestep_embedding,
)
from .unet_pass import SpatialTransformer, TransformerBlock, UNetBlock, UNetPass


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


def _attention_shape(config: UNetConfig) -> tuple[int, int, int]:
    """A SpatialTransformer's (context width, heads, transformer blocks)."""
    return config.context_dim, config.num_heads, config.num_attn_blocks


def _attention_levels(config: UNetConfig) -> list[bool]:
    return [2.0**-level in config.attn_scales for level in range(len(config.dim_mult))]


def build_input_blocks(ops, config: UNetConfig, with_face_mask: bool) -> nn.ModuleList:
    """LDM's input_blocks; the main path's input conv also reads the face-position mask."""
    dim, levels = config.dim, len(config.dim_mult)
    conv_in = (
        latent_and_mask_conv_class(ops.Conv2d)(config.in_channels - 1, dim)
        if with_face_mask
        else ops.Conv2d(config.ref_in_channels, dim, 3, padding=1)
    )
    layers = nn.ModuleList([UNetBlock([conv_in])])
    width = dim
    for level, (mult, has_attention) in enumerate(zip(config.dim_mult, _attention_levels(config))):
        for _ in range(config.num_res_blocks):
            block: list[nn.Module] = [ResBlock(ops, width, config.embed_dim, dim * mult)]
            width = dim * mult
            if has_attention:
                block.append(SpatialTransformer(ops, width, *_attention_shape(config), reads_references=False))
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
    return UNetBlock(
        [
            ResBlock(ops, width, config.embed_dim, width),
            SpatialTransformer(ops, width, *_attention_shape(config), reads_references),
            ResBlock(ops, width, config.embed_dim, width),
        ]
    )


def build_output_blocks(ops, config: UNetConfig, reads_references: bool) -> nn.ModuleList:
    skips = _skip_widths(config)
    layers = nn.ModuleList()
    width = config.dim * config.dim_mult[-1]
    attention = _attention_levels(config)
    for level in reversed(range(len(config.dim_mult))):
        out_width = config.dim * config.dim_mult[level]
        for j in range(config.num_res_blocks + 1):
            block: list[nn.Module] = [ResBlock(ops, width + skips.pop(), config.embed_dim, out_width)]
            width = out_width
            if attention[level]:
                block.append(SpatialTransformer(ops, width, *_attention_shape(config), reads_references))
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

    def __init__(self, config: UNetConfig, operations=None, attention: AttentionFunction | None = None):
        super().__init__()
        ops = operations or TORCH_OPERATIONS
        self.config = config
        # What self- and cross-attention compute with (ComfyUI's optimized attention under ComfyUI),
        # given as the layer operations are; None: PyTorch's SDPA. A call's BlockAdditions may give another.
        self.attention = attention
        # The dtype layers compute in when it differs from the stored weights' (ComfyUI's name:
        # its model management reads it to estimate the memory of cast weights); None: the weights'.
        self.manual_cast_dtype: torch.dtype | None = None
        self.time_embed = nn.Sequential(
            ops.Linear(config.dim, config.embed_dim), nn.SiLU(), ops.Linear(config.embed_dim, config.embed_dim)
        )
        self.input_blocks = build_input_blocks(ops, config, with_face_mask=True)
        self.middle_block = build_middle_block(ops, config, reads_references=True)
        self.output_blocks = build_output_blocks(ops, config, reads_references=True)
        out_width = config.dim * config.dim_mult[0]
        self.out = nn.Sequential(
            ops.GroupNorm(32, out_width, eps=1e-6), nn.SiLU(), ops.Conv2d(out_width, config.out_channels, 3, padding=1)
        )
        # The reference network: copies of the encoder and decoder (the middle block is shared).
        self.reference_input_blocks = build_input_blocks(ops, config, with_face_mask=False)
        self.reference_output_blocks = build_output_blocks(ops, config, reads_references=False)
        _name_feature_blocks(self.middle_block, "middle_block")
        _name_feature_blocks(self.output_blocks, "output_blocks")
        _name_feature_blocks(self.reference_output_blocks, "output_blocks")

    @property
    def weight_dtype(self) -> torch.dtype:
        """Dtype the (non-norm) weights are stored in."""
        return cast(nn.Conv2d, self.out[2]).weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of activations: `manual_cast_dtype` if set, else the weights' dtype."""
        return self.manual_cast_dtype or self.weight_dtype

    def _embed_time(self, t: int | torch.Tensor, rows: int, device: torch.device) -> torch.Tensor:
        """Time embedding of one timestep per row (t: [rows], or one for all; a number is made on
        the device, not copied to it)."""
        t = torch.full((rows,), t, device=device) if not isinstance(t, torch.Tensor) else t.to(device)
        if t.dim() == 0:
            t = t.expand(rows)
        if t.shape != (rows,):
            raise ContractError(
                f"{MODEL_NAME}: timesteps of shape {tuple(t.shape)} for {rows} rows; "
                f"give one timestep per row or a single one."
            )
        return self.time_embed(timestep_embedding(t, self.config.dim).to(self.compute_dtype))

    def _through_blocks(
        self,
        x: torch.Tensor,
        input_blocks: nn.ModuleList,
        output_blocks: nn.ModuleList,
        run: UNetPass,
    ) -> torch.Tensor:
        """x through the encoder `input_blocks`, the middle block and the decoder `output_blocks`
        (with the pass's additions)."""
        additions = run.additions
        skips: list[tuple[torch.Tensor, int]] = []
        for index, block in enumerate(input_blocks):
            additions.enter("input", index)
            x = additions.add_control(block(x, run), "input")
            (x,) = additions.patch("input_block_patch", x)
            skips.append((x, run.space))
            (x,) = additions.patch("input_block_patch_after_skip", x)
        additions.enter("middle", 0)
        x = additions.add_control(self.middle_block(x, run), "middle")
        for index, block in enumerate(output_blocks):
            additions.enter("output", index)
            skip, space = skips.pop()
            skip = additions.add_control(run.in_current(skip, space), "output")
            x, skip = additions.patch("output_block_patch", x, skip)
            x = torch.cat([x, skip], dim=1)
            x = block(x, run, skips[-1][0].shape[-2:] if skips else None)
        return x

    @torch.no_grad()
    def encode_references(
        self,
        reference_latents: torch.Tensor,
        t: int | torch.Tensor,
        reference_context: torch.Tensor,
        owners: Sequence[int] | None = None,
        copies: Sequence[int] | None = None,
    ) -> ReferenceFeatures:
        """The reference pass on latents [N,4,r,r] at timestep t (a number, or [N]).

        `reference_context` [N,77,C] is its cross-attention context (officially the negative
        prompt). Runs the reference encoder, the main middle block and the reference decoder.
        `owners`: with several people, the person (0, 1, ...) of each reference
        (`flashface.people.PeopleLayout.owners`). `copies`: how many times each reference stands
        among the references (the official padding of 1-3 faces to four repeats some), each
        computed once here and attended to as often as it stands.
        """
        n = reference_latents.shape[0]
        if reference_latents.dim() != 4 or reference_latents.shape[1] != self.config.ref_in_channels:
            raise ContractError(
                f"{MODEL_NAME}: reference latents must be [N,{self.config.ref_in_channels},r,r], "
                f"got {tuple(reference_latents.shape)}."
            )
        if reference_context.shape[0] != n:
            raise ContractError(f"{MODEL_NAME}: {reference_context.shape[0]} reference contexts for {n} references.")
        if owners is not None:
            owners = tuple(int(owner) for owner in owners)
            if len(owners) != n or sorted(set(owners)) != list(range(max(owners) + 1)):
                raise ContractError(
                    f"{MODEL_NAME}: the owners of {n} references must be one person number per "
                    f"reference, numbered from 0 without gaps; got {list(owners)}."
                )
        if copies is not None:
            copies = tuple(int(count) for count in copies)
            if len(copies) != n or min(copies) < 1:
                raise ContractError(
                    f"{MODEL_NAME}: the copies of {n} references must be one count of 1 or more "
                    f"per reference; got {list(copies)}."
                )
        device = reference_latents.device
        recorded: dict[str, torch.Tensor] = {}
        run = UNetPass(
            RowSpaces(RowPlan.unshared([0.0] * n)),
            self._embed_time(t, n, device),
            reference_context.to(self.compute_dtype),
            attention=self.attention,
            recorded=recorded,
        )
        self._through_blocks(
            reference_latents.to(self.compute_dtype),
            self.reference_input_blocks,
            self.reference_output_blocks,
            run,
        )
        return ReferenceFeatures(tokens=recorded, copies=copies, owners=owners)

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        t: int | torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        references: ReferenceFeatures | None,
        rows: RowPlan,
        additions: BlockAdditions | None = None,
        regions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise [R,4,h,w] for latents x [R,4,h,w] (returned in x's dtype).

        t: [R] or a number; context [R,77,C]; mask [R,h,w] face-position channel (None = zeros);
        `rows`: the layout of the rows and the reference weight of each (see `RowPlan`): rows the
        plan says are identical are computed once as far as they stay identical (not at all when
        `additions` are active: control residuals and block patches treat each row on its own).
        Rows with weight 0 still get SA1(y): they are not plain SD. With `references` None every
        weight must be 0. With references of several people, `regions` [h, w] (on the CPU) gives
        the person whose references each latent cell reads (`flashface.people.PeopleLayout.regions`,
        NO_REGION: none), the same for every row.
        """
        count = x.shape[0]
        if x.dim() != 4 or x.shape[1] != self.config.in_channels - 1:
            raise ContractError(
                f"{MODEL_NAME}: latents must be [R,{self.config.in_channels - 1},h,w], got {tuple(x.shape)}."
            )
        if context.shape[0] != count:
            raise ContractError(f"{MODEL_NAME}: {context.shape[0]} text contexts for {count} latent rows.")
        if mask is None:
            mask = x.new_zeros((count, *x.shape[2:]))
        if tuple(mask.shape) != (count, *x.shape[2:]):
            raise ContractError(
                f"{MODEL_NAME}: mask of shape {tuple(mask.shape)} for latents {tuple(x.shape)}; "
                "give one [h,w] mask per row."
            )
        if rows.rows != count:
            raise ContractError(f"{MODEL_NAME}: a row plan of {rows.rows} rows for {count} latent rows.")
        if references is None and any(weight != 0 for weight in rows.weights):
            raise ContractError(f"{MODEL_NAME}: nonzero reference weights need reference features.")
        self._check_regions(regions, references, x.shape[2:])
        additions = additions or BlockAdditions()
        additions.begin(x)
        spaces = RowSpaces(RowPlan.unshared(rows.weights) if additions.active else rows)
        run = UNetPass(
            spaces,
            self._embed_time(t, count, x.device),
            context.to(self.compute_dtype),
            additions=additions,
            attention=additions.attention or self.attention,
            references=references,
            regions=regions,
        )
        inputs = take_rows(
            torch.cat([x, mask[:, None].to(x.dtype)], 1).to(self.compute_dtype), spaces.representatives(INPUT)
        )
        out = self._through_blocks(inputs, self.input_blocks, self.output_blocks, run)
        (out,) = run.move(ROWS, out)
        return through_layers(self.out, out).to(x.dtype)

    @staticmethod
    def _check_regions(regions: torch.Tensor | None, references: ReferenceFeatures | None, size) -> None:
        owners = references.owners if references is not None else None
        if regions is None and owners is None:
            return
        if regions is None or owners is None:
            raise ContractError(
                f"{MODEL_NAME}: references of several people need the regions of the image that read "
                "each (and regions need references of several people)."
            )
        if tuple(regions.shape) != tuple(size) or regions.dtype != torch.long:
            raise ContractError(
                f"{MODEL_NAME}: regions must be one int64 person number per latent cell, "
                f"{list(size)}; got {regions.dtype} {list(regions.shape)}."
            )
        if regions.device.type != "cpu":  # read here and turned into positions per grid: host data
            raise ContractError(
                f"{MODEL_NAME}: give the regions as a CPU tensor (they are on {regions.device}); "
                "`flashface.people.PeopleLayout.regions` makes them there."
            )
        if int(regions.min()) < -1 or int(regions.max()) > max(owners):
            raise ContractError(
                f"{MODEL_NAME}: regions name a person with no references (people 0 to {max(owners)} "
                "have some; -1 is no region)."
            )
