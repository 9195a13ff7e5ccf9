"""FlashFace reference UNet: the SD1.5 UNet plus FlashFace's reference network.

Module names are those of ComfyUI's (and LDM's) SD UNet -- ``time_embed``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``; ``in_layers``/``emb_layers``/``out_layers``/
``skip_connection`` in residual blocks; ``norm``/``proj_in``/``transformer_blocks``/``proj_out``
in attention sites; ``attn1``/``attn2``/``ff``/``norm1-3`` in transformer blocks -- so that
ComfyUI's LoRA key maps, model merging and block patches find the main path where they find
SD1.5's. FlashFace's own parts have names of their own: the extra self-attention of every
middle and decoder transformer block (SA1) is ``reference_attn``, the reference copies of the
encoder and decoder are ``reference_input_blocks`` and ``reference_output_blocks``. The layers
are in `unet_blocks`, the reference attention in `reference_attention`, reading the published
file in `unet_loading`.

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
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .ops import TORCH_OPERATIONS, host_to_device, norm_at_least_fp32, through_layers
from .reference_attention import ReferenceFeatures, reference_attention
from .row_plan import INPUT, ROWS, TEXT, WEIGHT, RowPlan, RowSpaces, take_rows
from .unet_blocks import (
    MODEL_NAME,
    Attention,
    AttentionFunction,
    Downsample,
    FeedForward,
    ResBlock,
    Upsample,
    latent_and_mask_conv_class,
    timestep_embedding,
)


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


def _broadcasts_to(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    try:
        return tensor.dim() == target.dim() and torch.broadcast_shapes(tensor.shape, target.shape) == target.shape
    except RuntimeError:
        return False


BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
ATTENTION_PATCHES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch")
ATTENTION_REPLACEMENTS = ("attn1", "attn2")


class BlockAdditions:
    """What ComfyUI's samplers add to a main pass, applied where its SD UNet (openaimodel.UNetModel
    and its transformer blocks) applies them, so ControlNet, T2I-Adapter, FreeU, Deep Shrink and the
    attention patches of IPAdapter, HyperTile, Tome or a hypernetwork work as on SD1.5:

    * `control`: residuals by place ("input", "middle", "output": lists used from the end, one per
      block, as ComfyUI's ControlNets and T2I-Adapters make them), added to the main pass only
      (the reference pass reads the faces as trained);
    * `transformer_options`: ComfyUI's, whose "patches" of the kinds in BLOCK_PATCHES and
      ATTENTION_PATCHES and whose "patches_replace" of attn1/attn2 (keyed by (block, index,
      transformer index) or by block) are called as ComfyUI calls them, with "block",
      "block_index", "transformer_index", "original_shape" and "activations_shape" kept as it
      keeps them; FlashFace's reference attention is never patched;
    * `attention`: the function the main pass's self- and cross-attention compute with (ComfyUI's
      optimized attention under ComfyUI), else the library's SDPA.
    """

    def __init__(
        self,
        control: dict | None = None,
        transformer_options: dict | None = None,
        attention: AttentionFunction | None = None,
    ):
        # the lists are consumed as the blocks run: never those of the caller
        self.control: dict[str, list] = {name: list(values) for name, values in (control or {}).items()}
        self.transformer_options = transformer_options
        self.attention = attention
        options = transformer_options or {}
        patches = options.get("patches") or {}
        self.patches: dict[str, list] = {name: list(patches.get(name) or ()) for name in BLOCK_PATCHES}
        self.attention_patches: dict[str, list] = {name: list(patches.get(name) or ()) for name in ATTENTION_PATCHES}
        replaced = options.get("patches_replace") or {}
        self.replacements: dict[str, dict] = {name: dict(replaced.get(name) or {}) for name in ATTENTION_REPLACEMENTS}

    @property
    def active(self) -> bool:
        """Whether anything is added that treats each row on its own (rows are then not shared)."""
        return (
            any(self.control.values())
            or any(self.patches.values())
            or any(self.attention_patches.values())
            or any(self.replacements.values())
        )

    @property
    def patches_attention(self) -> bool:
        return any(self.attention_patches.values()) or any(self.replacements.values())

    def begin(self, x: torch.Tensor) -> None:
        """A main pass starts on latents x (ComfyUI's "original_shape", "transformer_index")."""
        if self.transformer_options is not None:
            self.transformer_options["original_shape"] = list(x.shape)
            self.transformer_options["transformer_index"] = 0

    def enter(self, place: str, index: int) -> None:
        if self.transformer_options is not None:
            self.transformer_options["block"] = (place, index)

    def set_option(self, name: str, value) -> None:
        if self.transformer_options is not None:
            self.transformer_options[name] = value

    def extra_options(self, heads: int, dim_head: int) -> dict:
        """What ComfyUI hands an attention patch: its transformer options but the patches, with
        the attention's heads and head width."""
        options = {
            name: value
            for name, value in (self.transformer_options or {}).items()
            if name not in ("patches", "patches_replace")
        }
        return {**options, "n_heads": heads, "dim_head": dim_head, "attn_precision": None}

    def replacement(self, kind: str):
        """The replacement of attention `kind` for the running transformer block, or None."""
        replacements = self.replacements[kind]
        if not replacements or self.transformer_options is None:
            return None
        block = self.transformer_options.get("block")
        index = self.transformer_options.get("block_index", 0)
        key = (block[0], block[1], index) if block is not None else None
        return replacements.get(key) if key in replacements else replacements.get(block)

    def add_control(self, h: torch.Tensor, place: str) -> torch.Tensor:
        residuals = self.control.get(place)
        residual = residuals.pop() if residuals else None
        if residual is None:
            return h
        if not _broadcasts_to(residual, h):
            raise InvalidInputError(
                f"A ControlNet / T2I-Adapter residual of shape {tuple(residual.shape)} does not fit the FlashFace "
                f"UNet's {place} block output {tuple(h.shape)}: it was made for another model (use one for SD1.5)."
            )
        return h + residual.to(h.dtype)

    def patch(self, name: str, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`values` through the patches of kind `name` (one tensor, or the output and skip tensors)."""
        for patch in self.patches[name]:
            result = patch(*values, self.transformer_options)
            values = result if isinstance(result, tuple) else (result,)
        return values


@dataclass
class _Pass:
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

    def forward(self, x: torch.Tensor, run: _Pass, grid: tuple[int, int]) -> torch.Tensor:
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
                raise InvalidInputError(
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
        kind: str, attention: Attention, n: torch.Tensor, context: torch.Tensor | None, run: _Pass
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

    def __init__(self, ops, dim: int, config: UNetConfig, reads_references: bool):
        super().__init__()
        self.norm = ops.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = ops.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                TransformerBlock(ops, dim, config.context_dim, config.num_heads, reads_references)
                for _ in range(config.num_attn_blocks)
            ]
        )
        self.proj_out = ops.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, run: _Pass) -> torch.Tensor:
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
    return UNetBlock(
        [
            ResBlock(ops, width, config.embed_dim, width),
            SpatialTransformer(ops, width, config, reads_references),
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
            raise InvalidInputError(
                f"{MODEL_NAME}: timesteps of shape {tuple(t.shape)} for {rows} rows; "
                f"give one timestep per row or a single one."
            )
        return self.time_embed(timestep_embedding(t, self.config.dim).to(self.compute_dtype))

    def _through_blocks(
        self,
        x: torch.Tensor,
        input_blocks: nn.ModuleList,
        output_blocks: nn.ModuleList,
        run: _Pass,
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
            raise InvalidInputError(
                f"{MODEL_NAME}: reference latents must be [N,{self.config.ref_in_channels},r,r], "
                f"got {tuple(reference_latents.shape)}."
            )
        if reference_context.shape[0] != n:
            raise InvalidInputError(
                f"{MODEL_NAME}: {reference_context.shape[0]} reference contexts for {n} references."
            )
        if owners is not None:
            owners = tuple(int(owner) for owner in owners)
            if len(owners) != n or sorted(set(owners)) != list(range(max(owners) + 1)):
                raise InvalidInputError(
                    f"{MODEL_NAME}: the owners of {n} references must be one person number per "
                    f"reference, numbered from 0 without gaps; got {list(owners)}."
                )
        if copies is not None:
            copies = tuple(int(count) for count in copies)
            if len(copies) != n or min(copies) < 1:
                raise InvalidInputError(
                    f"{MODEL_NAME}: the copies of {n} references must be one count of 1 or more "
                    f"per reference; got {list(copies)}."
                )
        device = reference_latents.device
        recorded: dict[str, torch.Tensor] = {}
        run = _Pass(
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
            raise InvalidInputError(
                f"{MODEL_NAME}: latents must be [R,{self.config.in_channels - 1},h,w], got {tuple(x.shape)}."
            )
        if context.shape[0] != count:
            raise InvalidInputError(f"{MODEL_NAME}: {context.shape[0]} text contexts for {count} latent rows.")
        if mask is None:
            mask = x.new_zeros((count, *x.shape[2:]))
        if tuple(mask.shape) != (count, *x.shape[2:]):
            raise InvalidInputError(
                f"{MODEL_NAME}: mask of shape {tuple(mask.shape)} for latents {tuple(x.shape)}; "
                "give one [h,w] mask per row."
            )
        if rows.rows != count:
            raise InvalidInputError(f"{MODEL_NAME}: a row plan of {rows.rows} rows for {count} latent rows.")
        if references is None and any(weight != 0 for weight in rows.weights):
            raise InvalidInputError(f"{MODEL_NAME}: nonzero reference weights need reference features.")
        self._check_regions(regions, references, x.shape[2:])
        additions = additions or BlockAdditions()
        additions.begin(x)
        spaces = RowSpaces(RowPlan.unshared(rows.weights) if additions.active else rows)
        run = _Pass(
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
            raise InvalidInputError(
                f"{MODEL_NAME}: references of several people need the regions of the image that read "
                "each (and regions need references of several people)."
            )
        if tuple(regions.shape) != tuple(size) or regions.dtype != torch.long:
            raise InvalidInputError(
                f"{MODEL_NAME}: regions must be one int64 person number per latent cell, "
                f"{list(size)}; got {regions.dtype} {list(regions.shape)}."
            )
        if regions.device.type != "cpu":  # read here and turned into positions per grid: host data
            raise InvalidInputError(
                f"{MODEL_NAME}: give the regions as a CPU tensor (they are on {regions.device}); "
                "`flashface.people.PeopleLayout.regions` makes them there."
            )
        if int(regions.min()) < -1 or int(regions.max()) > max(owners):
            raise InvalidInputError(
                f"{MODEL_NAME}: regions name a person with no references (people 0 to {max(owners)} "
                "have some; -1 is no region)."
            )
