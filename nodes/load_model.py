"""FlashFace Load Model: the four model files -> one FLASHFACE_MODEL, managed by ComfyUI.

Every network is wrapped in a ``comfy.model_patcher.ModelPatcher`` so that ComfyUI's model
manager moves it to the GPU when a FlashFace node needs it (``load_models_gpu``) and back to the
offload device when other models need the memory. The UNet is built from ``comfy.ops`` layers,
so ComfyUI can also load it partially on small GPUs and cast fp16/bf16 weights per layer.
Loads are cached per file (path, identity, size, mtime) and settings: running again, or changing one
file, only loads what changed; a file replaced or overwritten on disk is loaded again (`IS_CHANGED`).
Every network owns its weights (copied from the file when loaded), so nothing done to a file
afterwards can crash ComfyUI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

from ..flashface.models.clip_text import load_text_encoder
from ..flashface.models.model_registry import DETECTOR_FOLDERS, published_size
from ..flashface.models.ops import WEIGHT_DTYPES
from ..flashface.models.retinaface import load_face_detector
from ..flashface.models.unet_loading import load_unet
from ..flashface.models.vae import VAE_ATTENTIONS, load_vae
from ..flashface.models.vae_codec import VAECodec
from ..flashface.utils.cache_utils import recorded_load_failure
from . import model_files
from .comfy_model import FlashFaceDiffusionModel, comfyui_attention
from .declare import FlashFaceNode, outputs
from .inputs import expect

logger = logging.getLogger(__name__)

FLASHFACE_MODEL = "FLASHFACE_MODEL"
UNET_WEIGHT_DTYPES = {"auto": None, **WEIGHT_DTYPES}  # auto: what ComfyUI picks for the device


@dataclass(eq=False)
class FlashFaceModel:
    """What flows on a FLASHFACE_MODEL link: the four networks, each under ComfyUI's control."""

    unet: comfy.model_patcher.ModelPatcher
    vae: comfy.model_patcher.ModelPatcher
    text_encoder: comfy.model_patcher.ModelPatcher
    detector: comfy.model_patcher.ModelPatcher

    def ready(self, *parts: str) -> list[Any]:
        """Load the named networks for use (ComfyUI evicts others if needed, and may load a network
        only partly on a small GPU); return them. They compute on `device(part)`."""
        patchers = [getattr(self, part) for part in parts]
        mm.load_models_gpu(patchers)
        # The UNet's patcher holds ComfyUI's model around it (`comfy_model`); the library takes the UNet.
        return [getattr(patcher.model, "diffusion_model", patcher.model) for patcher in patchers]

    def vae_codec(self) -> VAECodec:
        """The library's encode/decode (with its out-of-memory fallbacks and Cancel) on the loaded VAE."""
        (vae,) = self.ready("vae")
        return VAECodec(vae, self.device("vae"))

    @property
    def prompt_width(self) -> int:
        """The width of the text embeddings the UNet reads (its cross-attention context)."""
        return self.unet.model.diffusion_model.config.context_dim

    def device(self, part: str) -> torch.device:
        """Where ComfyUI runs that network: its load device, whatever part of it is loaded there."""
        return getattr(self, part).load_device


def model_input(uses: str | None = None) -> tuple:
    """The flashface_model input of a node (and which of the networks it uses)."""
    return FLASHFACE_MODEL, {"tooltip": f"From FlashFace Load Model{f' (uses its {uses})' if uses else ''}."}


def expect_model(value) -> FlashFaceModel:
    """What arrived on a flashface_model input, if it is one (see `inputs.expect`)."""
    return expect(value, FlashFaceModel, "flashface_model", "FlashFace Load Model")


def _patcher(module: torch.nn.Module, load_device: torch.device) -> comfy.model_patcher.ModelPatcher:
    """The patcher ComfyUI builds its own models with: `CoreModelPatcher` where ComfyUI has it (it
    is the dynamic-VRAM patcher when ComfyUI enables that at start-up, so it is looked up at each
    load), else `ModelPatcher`."""
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_class(
        module, load_device=load_device, offload_device=mm.unet_offload_device(), size=mm.module_size(module)
    )


def _load_unet(path: Path, weight_dtype: str) -> comfy.model_patcher.ModelPatcher:
    device = mm.get_torch_device()
    dtype = UNET_WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(device)
    manual_cast_dtype = mm.unet_manual_cast(dtype, device)
    operations = comfy.ops.manual_cast if manual_cast_dtype is not None else comfy.ops.disable_weight_init
    unet = load_unet(
        path, device=mm.unet_offload_device(), dtype=dtype, operations=operations, attention=comfyui_attention()
    )
    unet.manual_cast_dtype = manual_cast_dtype
    logger.info("FlashFace UNet %s: weights %s, compute %s on %s", path.name, dtype, manual_cast_dtype or dtype, device)
    return _patcher(FlashFaceDiffusionModel(unet), device)


def _load_vae(path: Path, attention: str) -> comfy.model_patcher.ModelPatcher:
    vae = load_vae(path, device=mm.unet_offload_device(), dtype=torch.float32, attention=attention)
    return _patcher(vae, mm.vae_device())


def _load_text_encoder(path: Path) -> comfy.model_patcher.ModelPatcher:
    encoder = load_text_encoder(path, device=mm.unet_offload_device(), dtype=torch.float32)
    return _patcher(encoder, mm.text_encoder_device())


def _load_detector(path: Path) -> comfy.model_patcher.ModelPatcher:
    detector = load_face_detector(path, device=mm.unet_offload_device(), dtype=torch.float32)
    return _patcher(detector, mm.get_torch_device())


class _LoadCache:
    """The most recent successful load of each kind, reused while its file (same identity, size
    and time) and settings are unchanged. A load that fails leaves the cached model in place."""

    def __init__(self):
        self._entries: dict[str, tuple[tuple, comfy.model_patcher.ModelPatcher]] = {}

    def get(self, kind: str, path: Path, settings: tuple, load) -> comfy.model_patcher.ModelPatcher:
        stat = path.stat()
        key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, settings)
        cached = self._entries.get(kind)
        if cached is not None and cached[0] == key:
            return cached[1]
        with recorded_load_failure(path):
            patcher = load()
        self._entries[kind] = (key, patcher)
        return patcher


_cache = _LoadCache()


class FlashFaceLoadModel(FlashFaceNode):
    """Loads the FlashFace networks. Files listed first are the official ones: if one is missing it is
    downloaded (verified) into models/flashface on first use, with progress shown here. Nothing is
    loaded when ComfyUI starts.
    """

    SEARCH_ALIASES = [
        "flashface",
        "face id",
        "identity",
        "portrait",
        "load face model",
        "instantid",
        "pulid",
        "photomaker",
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("flashface_model", FLASHFACE_MODEL, "The FlashFace networks, for Detect Face, CLIP Text Encode and Generator.")
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": (
                    model_files.choices("unet"),
                    {
                        "tooltip": f"The FlashFace reference UNet (flashface.ckpt, {published_size('flashface')}, "
                        "from models/flashface)."
                    },
                ),
                "vae_name": (
                    model_files.choices("vae"),
                    {
                        "tooltip": "The SD 1.x VAE in FlashFace's key naming "
                        "(sd-v1-vae.pth, from models/flashface or models/vae)."
                    },
                ),
                "clip_name": (
                    model_files.choices("text_encoder"),
                    {
                        "tooltip": "OpenAI CLIP ViT-L/14 in FlashFace's key naming (openai-clip-vit-large-14.pth, "
                        "from models/flashface or models/clip); only its text tower is loaded."
                    },
                ),
                "detector_name": (
                    model_files.choices("detector"),
                    {
                        "tooltip": "RetinaFace ResNet-50 face detector (retinaface_resnet50.pth or facexlib's "
                        f"detection_Resnet50_Final.pth, from models/flashface or models/"
                        f"{', models/'.join(DETECTOR_FOLDERS)})."
                    },
                ),
                "weight_dtype": (
                    list(UNET_WEIGHT_DTYPES),
                    {
                        "default": "auto",
                        "tooltip": "Precision of the UNet weights. "
                        "auto: what ComfyUI picks for your device (fp16 on most "
                        "GPUs, fp32 on CPU). fp16/bf16 halve the memory; fp8_e4m3fn/fp8_e5m2 halve it again "
                        "(weights stored in fp8, each layer computing in fp16 on a GPU, fp32 on the CPU; slightly "
                        "less exact). Layers compute in a type your device supports. The VAE, CLIP and detector "
                        "always run in fp32, as in the official code.",
                    },
                ),
            },
            "optional": {  # optional so that prompts saved before these inputs existed still run
                "vae_attention": (
                    list(VAE_ATTENTIONS),
                    {
                        "default": VAE_ATTENTIONS[0],
                        "tooltip": "The VAE's mid-block attention. "
                        "official: exactly as the official FlashFace code computes "
                        "it (an unusual reshape the published weights were used with). standard: the usual SD "
                        "attention, which is what ComfyUI's own VAE Decode gives on this pack's LATENT output.",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, unet_name, vae_name, clip_name, detector_name, **settings):
        """The files' identities: ComfyUI reuses this node's output only while they are unchanged."""
        names = (unet_name, vae_name, clip_name, detector_name)
        return "\n".join(
            model_files.fingerprint(kind, name) for kind, name in zip(model_files.INPUT_KINDS.values(), names)
        )

    def load(self, unet_name, vae_name, clip_name, detector_name, weight_dtype, vae_attention=VAE_ATTENTIONS[0]):
        names = (unet_name, vae_name, clip_name, detector_name)
        paths = {kind: model_files.resolve(kind, name) for kind, name in zip(model_files.INPUT_KINDS.values(), names)}
        model = FlashFaceModel(
            unet=_cache.get("unet", paths["unet"], (weight_dtype,), lambda: _load_unet(paths["unet"], weight_dtype)),
            vae=_cache.get("vae", paths["vae"], (vae_attention,), lambda: _load_vae(paths["vae"], vae_attention)),
            text_encoder=_cache.get(
                "text_encoder", paths["text_encoder"], (), lambda: _load_text_encoder(paths["text_encoder"])
            ),
            detector=_cache.get("detector", paths["detector"], (), lambda: _load_detector(paths["detector"])),
        )
        return (model,)
