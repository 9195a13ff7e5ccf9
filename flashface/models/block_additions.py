"""What ComfyUI's samplers add to the UNet's main pass: control residuals, block patches and
attention patches or replacements, applied where ComfyUI's SD UNet applies them."""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .unet_blocks import AttentionFunction


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
