"""Reading the published FlashFace UNet file (or a compact one, `convert`) into `FlashFaceUNet`.

The published ``flashface.ckpt`` stores the main encoder, middle block and decoder twice
(``encoder.*`` and ``ori_encoder.*`` ...: each pair is checked equal and kept once), the
reference copies of the encoder and decoder, a never-executed ``ref_middle`` (never read), and a
5-channel input convolution (latent + face-position mask), split here into the latent channels
and `mask_weight`. `official_key` maps a module key to the file's name of that tensor; the
architecture is read from the keys and shapes (`infer_config`).
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import ModelFileError
from ..utils.devices import dtype_name
from .checkpoint import Checkpoint, Layout, TensorPlan, checkpoint_source, count_indexed, load_layout, required_shape
from .compact import compact_view, stored_weight_dtype
from .ops import (
    CASTING_OPERATIONS,
    STORAGE_ONLY_DTYPES,
    TORCH_OPERATIONS,
    compute_dtype_for,
)
from .unet import FlashFaceUNet, UNetConfig
from .unet_blocks import MODEL_NAME

# Lists stored twice in the published file (the module and its `ori_` alias).
ALIASED_LISTS = ("encoder", "middle", "decoder")
UNUSED_PREFIX = "ref_middle."
logger = logging.getLogger(__name__)


def _require(checkpoint: Checkpoint, key: str) -> tuple[int, ...]:
    return required_shape(
        checkpoint,
        key,
        f"This is not a {MODEL_NAME} checkpoint: select the FlashFace UNet file "
        f"(flashface.ckpt or flashface.safetensors) in that slot.",
    )


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
        raise ModelFileError(
            f"{checkpoint.path}: the encoder layout is not one a {MODEL_NAME} has; select the FlashFace UNet file."
        )
    attn_blocks = count_indexed(checkpoint, "middle.1.blocks.{}.norm1.weight")
    if num_heads is None:
        stored = checkpoint.metadata().get("num_heads")
        num_heads = int(stored) if stored else UNetConfig.num_heads
    return UNetConfig(
        dim=dim,
        dim_mult=tuple(blocks[0][0] // dim for blocks in levels),
        num_res_blocks=len(levels[0]),
        attn_scales=tuple(2.0**-level for level, blocks in enumerate(levels) if blocks[0][1]),
        num_attn_blocks=attn_blocks,
        num_heads=num_heads,
        context_dim=_require(checkpoint, "middle.1.blocks.0.cross_attn.k.weight")[1],
        in_channels=_require(checkpoint, "encoder.0.weight")[1],
        ref_in_channels=_require(checkpoint, "ref_encoder.0.weight")[1],
        out_channels=_require(checkpoint, "head.2.weight")[0],
    )


# Module list names -> the published file's.
OFFICIAL_LISTS = {
    "time_embed": "time_embedding",
    "input_blocks": "encoder",
    "middle_block": "middle",
    "output_blocks": "decoder",
    "out": "head",
    "reference_input_blocks": "ref_encoder",
    "reference_output_blocks": "ref_decoder",
}
# Module path pieces -> the published file's, in this order (each piece between dots).
OFFICIAL_PIECES = (
    (".0.op.", "."),  # a downsampling conv is an entry of its own in the file
    (".conv.", ".1."),  # the upsampling conv sits at index 1 of the file's nn.Sequential
    (".in_layers.", ".layer1."),
    (".emb_layers.", ".embedding."),
    (".out_layers.", ".layer2."),
    (".skip_connection.", ".shortcut."),
    (".norm.", ".norm1."),
    (".proj_in.", ".conv1."),
    (".proj_out.", ".conv2."),
    (".transformer_blocks.", ".blocks."),
    (".reference_attn.", ".self_attn.self_attn_first."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".ff.net.", ".ffn."),
)


def official_key(module_key: str) -> str:
    """The published file's name of a module tensor ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    -> "encoder.1.1.blocks.0.self_attn.q.weight")."""
    head, rest = module_key.split(".", 1)
    rest = "." + rest
    if head.endswith("input_blocks") and rest.startswith(".0.0."):  # the input conv is an entry of its own too
        rest = rest[len(".0") :]
    for piece, official in OFFICIAL_PIECES:
        rest = rest.replace(piece, official)
    return OFFICIAL_LISTS[head] + rest


CONV_IN_WEIGHT = "input_blocks.0.0.weight"
CONV_IN_MASK_WEIGHT = "input_blocks.0.0.mask_weight"  # the published conv_in's last input channel


def file_keys(module_key: str) -> tuple[str, ...]:
    """The published file's names of a module tensor: its official name, and the `ori_` copy the
    file also holds where the main and reference paths share it."""
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
        names = file_keys(key)
        plan = TensorPlan.copy(names[0]) if len(names) == 1 else TensorPlan.aliased(*names)
        if key == CONV_IN_WEIGHT:
            plan = plan.narrowed(1, 0, latent_channels)
        elif key == CONV_IN_MASK_WEIGHT:
            plan = plan.narrowed(1, latent_channels, 1)
        plans[key] = plan
    return plans


COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")  # ComfyUI's ModelSave, UNet-only files


class ComfyNamedCheckpoint(Checkpoint):
    """A FlashFace UNet stored under ComfyUI's module names (what ComfyUI's ModelSave writes of a
    FlashFace MODEL, LoRAs and merges applied) seen as the published layout: each official name
    reads the tensor of its module name (`official_key`), the `ori_` aliases the same tensors, and
    the input conv's latent and mask channels (stored apart, or joined) the published 5-channel
    tensor. Tensors outside the UNet (a VAE or text encoder saved beside it) are not offered."""

    def __init__(self, stored: Checkpoint, prefix: str):
        self.stored, self.prefix, self.path = stored, prefix, stored.path
        self.split_conv_in = prefix + CONV_IN_MASK_WEIGHT in stored
        self.names: dict[str, str] = {}
        for key in stored.keys():
            if not key.startswith(prefix) or key == prefix + CONV_IN_MASK_WEIGHT:
                continue
            if key[len(prefix) :].split(".", 1)[0] not in OFFICIAL_LISTS:  # not the UNet's (a VAE beside it)
                continue
            official = official_key(key[len(prefix) :])
            self.names[official] = key
            if official.split(".", 1)[0] in ALIASED_LISTS:
                self.names["ori_" + official] = key

    def _joins_mask(self, key: str) -> bool:
        return self.split_conv_in and self.names[key] == self.prefix + CONV_IN_WEIGHT

    def keys(self) -> list[str]:
        return list(self.names)

    def shape(self, key: str) -> tuple[int, ...]:
        shape = tuple(self.stored.shape(self.names[key]))
        return (shape[0], shape[1] + 1, *shape[2:]) if self._joins_mask(key) else shape

    def tensor(self, key: str) -> torch.Tensor:
        tensor = self.stored.tensor(self.names[key])
        if self._joins_mask(key):
            tensor = torch.cat([tensor, self.stored.tensor(self.prefix + CONV_IN_MASK_WEIGHT).to(tensor.dtype)], dim=1)
        return tensor

    def metadata(self) -> dict[str, str]:
        return self.stored.metadata()

    def close(self) -> None:
        self.stored.close()


def unet_view(checkpoint: Checkpoint) -> Checkpoint:
    """Any FlashFace UNet file seen as the published layout: a compact file (`compact_view`), a
    FlashFace UNet in ComfyUI's names (`ComfyNamedCheckpoint`), or the published file itself. A plain
    SD1.5 UNet, which lacks the reference network, is refused with what it is and what to do."""
    if stored_weight_dtype(checkpoint) is not None:
        return compact_view(checkpoint)
    if "ref_encoder.0.weight" in checkpoint:
        return checkpoint
    for prefix in COMFY_PREFIXES:
        if prefix + "reference_input_blocks.0.0.weight" in checkpoint:
            return ComfyNamedCheckpoint(checkpoint, prefix)
    if any(prefix + CONV_IN_WEIGHT in checkpoint for prefix in COMFY_PREFIXES):
        raise ModelFileError(
            f"{checkpoint.path} is an SD1.5 checkpoint (a UNet without FlashFace's reference network), not a FlashFace "
            "UNet: pick the FlashFace UNet file (flashface.ckpt) here. To give FlashFace this checkpoint's look, graft "
            "it with FlashFace Graft Checkpoint (python -m flashface ... --graft)."
        )
    return checkpoint


def infer_layout(checkpoint: Checkpoint, num_heads: int | None = None) -> Layout[UNetConfig]:
    """The layout of the published file (or another FlashFace UNet file seen through `unet_view`):
    the never-executed `ref_middle` unused."""
    config = infer_config(checkpoint, num_heads)
    return Layout(config, checkpoint_plan(config), lambda key: key.startswith(UNUSED_PREFIX))


def load_unet(
    source: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    operations=None,
    num_heads: int | None = None,
    attention=None,
) -> FlashFaceUNet:
    """Load the FlashFace UNet from a path or an open `Checkpoint` into `dtype` on `device`.

    Norm parameters stay fp32. Each aliased tensor pair is checked equal and kept once;
    `ref_middle.*` is never read. A compact file (`convert.convert_unet`) and a FlashFace UNet saved
    in ComfyUI's names (ComfyUI's ModelSave) load the same way (`unet_view`).
    Weights stored in fp8 (`STORAGE_ONLY_DTYPES`) are cast per layer to the compute dtype
    (`compute_dtype_for(device)`, the `manual_cast_dtype`), by the library's casting layers unless
    `operations` (ComfyUI's cast layers) are given. `attention`: what the UNet's self- and
    cross-attention compute with (`unet_blocks.sdpa`'s signature; None: PyTorch's SDPA).
    """
    storage_only = dtype in STORAGE_ONLY_DTYPES
    ops = operations or (CASTING_OPERATIONS if storage_only else TORCH_OPERATIONS)
    with checkpoint_source(source) as opened:
        stored = stored_weight_dtype(opened)
        if stored is not None and dtype.itemsize > stored.itemsize:
            logger.warning(
                "%s holds %s weights: loaded as %s they take %d times the memory with the precision of %s. Load it "
                "as %s, or convert the published file to %s.",
                opened.path,
                dtype_name(stored),
                dtype_name(dtype),
                dtype.itemsize // stored.itemsize,
                dtype_name(stored),
                dtype_name(stored),
                dtype_name(dtype),
            )
        model = load_layout(
            lambda config: FlashFaceUNet(config, ops, attention),
            unet_view(opened),
            lambda checkpoint: infer_layout(checkpoint, num_heads),
            what=MODEL_NAME,
            device=device,
            dtype=dtype,
        )
    if storage_only:
        model.manual_cast_dtype = compute_dtype_for(device)
    return model
