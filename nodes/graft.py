"""FlashFace Graft Checkpoint: a user's SD1.5 checkpoint grafted onto the FlashFace UNet ("add
difference", experimental; the math and the file checks are `flashface.models.graft`).

The graft is ComfyUI's own kind of patch, a weight difference on the UNet's ModelPatcher, as
ModelMergeAdd makes: the output's UNet is a clone of the input's with strength * (CHECKPOINT - BASE)
on every main-path tensor with an SD1.5 partner, so the Generator, FlashFace Apply, LoRAs and
ComfyUI's memory management see the grafted weights, and no second UNet is held. The difference
(fp32, one SD1.5 UNet's worth) is read tensor by tensor and kept for the most recent pair of
files; a new strength only changes the patch's strength.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import comfy.utils
import torch

from ..flashface.models.graft import check_strength, graft_shapes, open_graft
from . import model_files
from .declare import FlashFaceNode, outputs
from .load_model import FLASHFACE_MODEL, expect_model, model_input

GRAFT_EXPLAINED = (
    "Experimental: adds strength * (checkpoint - base_checkpoint) to FlashFace's main UNet, as ControlNet "
    "and inpainting models are moved between fine-tunes; the network that reads the faces is left as it is."
)


class _Differences:
    """CHECKPOINT - BASE per grafted tensor, for the most recent pair of files and UNet layout."""

    def __init__(self):
        self._key: tuple | None = None
        self._differences: dict[str, torch.Tensor] = {}

    def get(self, custom: Path, base: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        key = (model_files.file_fingerprint(custom), model_files.file_fingerprint(base), tuple(sorted(shapes.items())))
        if key != self._key:
            self._key, self._differences = None, {}  # the old difference is let go before the new is read
            bar = comfy.utils.ProgressBar(len(shapes))
            with open_graft(custom, base, shapes) as graft:
                differences = dict(graft.differences(lambda done, total: bar.update_absolute(done, total)))
            self._key, self._differences = key, differences
        return self._differences


_differences = _Differences()


class FlashFaceGraftCheckpoint(FlashFaceNode):
    """Experimental: your own SD1.5 checkpoint's look with FlashFace's identity. Adds the difference
    between `checkpoint` (Realistic Vision, epiCRealism, ...) and the SD1.5 it was fine-tuned from
    (`base_checkpoint`, usually v1-5-pruned-emaonly) to FlashFace's main UNet: "add difference", the
    way ControlNet and inpainting models are moved between fine-tunes. The network that reads the
    faces and FlashFace's reference attention are left as they are. Nobody has published images of
    this yet: compare with strength 0."""

    SEARCH_ALIASES = [
        "own checkpoint",
        "custom checkpoint",
        "my checkpoint",
        "add difference",
        "graft",
        "realistic vision",
        "other base model",
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (
            "flashface_model",
            FLASHFACE_MODEL,
            "The FlashFace networks with the checkpoint's difference grafted onto the UNet: connect it where the "
            "Load Model output went (Generator, FlashFace Apply, ...).",
        )
    )
    FUNCTION = "graft"

    @classmethod
    def INPUT_TYPES(cls):
        checkpoints = model_files.checkpoint_choices()
        return {
            "required": {
                "flashface_model": model_input("UNet"),
                "checkpoint": (
                    checkpoints,
                    {
                        "tooltip": "Your SD1.5 checkpoint (from models/checkpoints), whose look you want. "
                        + GRAFT_EXPLAINED
                    },
                ),
                "base_checkpoint": (
                    checkpoints,
                    {
                        "tooltip": "The SD1.5 that checkpoint was fine-tuned from, usually v1-5-pruned-emaonly "
                        "(from models/checkpoints): what the checkpoint changed is what gets added."
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "How much of the difference is added: 0 = FlashFace as it is, 1 = the whole "
                        "difference. Lower it if the likeness weakens.",
                    },
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, checkpoint, base_checkpoint, **_):
        """The two files' identities (strength and model are compared by ComfyUI itself)."""
        return "\n".join(model_files.checkpoint_fingerprint(name) for name in (checkpoint, base_checkpoint))

    def graft(self, flashface_model, checkpoint, base_checkpoint, strength):
        model = expect_model(flashface_model)
        strength = check_strength(strength)
        custom, base = (model_files.resolve_checkpoint(name) for name in (checkpoint, base_checkpoint))
        shapes = graft_shapes(model.unet.model.diffusion_model)
        if strength == 0:
            with open_graft(custom, base, shapes):  # the files are checked all the same
                return (model,)
        differences = _differences.get(custom, base, shapes)
        unet = model.unet.clone()
        unet.add_patches({f"diffusion_model.{key}": (value,) for key, value in differences.items()}, strength)
        return (dataclasses.replace(model, unet=unet),)
