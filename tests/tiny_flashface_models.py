"""One set of tiny seeded FlashFace models that fit together, for the ComfyUI tests and benches.

UNet context width == CLIP width (32), a 4-level VAE (factor 8, z_dim 4), and the real-size
RetinaFace (it has one size). File names are deliberately not the official ones: an official
name makes Load Model verify the file against the real checksum.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from tiny_clip_text import write_tiny_clip_text
from tiny_retinaface import write_retinaface
from tiny_unet import write_tiny_unet
from tiny_vae import write_tiny_vae

TEXT_WIDTH = 32
TINY_MODELS = {  # Load Model input -> file name in models/flashface
    "unet_name": "tiny_flashface_unet.safetensors",
    "vae_name": "tiny_sd_vae.safetensors",
    "clip_name": "tiny_clip.safetensors",
    "detector_name": "tiny_retinaface.pth",
}


def write_tiny_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the set into `folder`; the path of each Load Model input's file."""
    paths = {name: Path(folder) / file for name, file in TINY_MODELS.items()}
    write_tiny_unet(paths["unet_name"], seed=seed, context_dim=TEXT_WIDTH)
    write_tiny_vae(paths["vae_name"], seed=seed)
    write_tiny_clip_text(paths["clip_name"], seed=seed, width=TEXT_WIDTH)
    write_retinaface(paths["detector_name"], seed=seed)
    return paths


TINY_LORA = "tiny_kohya_locon.safetensors"  # in models/loras: what the bundled LoRA workflow gets


def write_tiny_lora(models_dir: Path) -> Path:
    """The tiny kohya LoRA + LoCon (tiny_lora.py) for the tiny UNet, in `models_dir`/loras."""
    from tiny_lora import write_loras

    path, _ = write_loras(Path(models_dir) / "loras", context_dim=TEXT_WIDTH)["kohya"]
    assert path.name == TINY_LORA
    return path


# in models/flashface and models/controlnet: a tiny UNet of width 64 and a ControlNet for it
# (tiny_controlnet.py says why 64)
CONTROLNET_UNET = "tiny_unet_width64.safetensors"
TINY_CONTROLNETS = {"random": "tiny_controlnet.safetensors", "zero": "tiny_controlnet_zero_outputs.safetensors"}
# and a four-level tiny UNet with a T2I-Adapter for it (in models/controlnet, where ComfyUI looks)
ADAPTER_UNET = "tiny_unet_four_levels.safetensors"
TINY_T2I_ADAPTERS = {"random": "tiny_t2i_adapter.safetensors", "zero": "tiny_t2i_adapter_zero.safetensors"}


def write_tiny_controlnets(models_dir: Path) -> None:
    """The width-64 tiny UNet and its tiny ControlNets (random, and with zero output convolutions);
    the four-level tiny UNet and its T2I-Adapters (random, and all zero)."""
    from tiny_controlnet import write_adapter_unet, write_controlnet_unet, write_tiny_controlnet, write_tiny_t2i_adapter

    write_controlnet_unet(Path(models_dir) / "flashface" / CONTROLNET_UNET, TEXT_WIDTH)
    for kind, name in TINY_CONTROLNETS.items():
        write_tiny_controlnet(Path(models_dir) / "controlnet" / name, TEXT_WIDTH, zero_outputs=kind == "zero")
    write_adapter_unet(Path(models_dir) / "flashface" / ADAPTER_UNET, TEXT_WIDTH)
    for kind, name in TINY_T2I_ADAPTERS.items():
        write_tiny_t2i_adapter(Path(models_dir) / "controlnet" / name, zero=kind == "zero")


# in models/checkpoints: an SD1.5 fine-tune of the tiny UNet's layout and its base, single-file checkpoints
TINY_SD15 = {"checkpoint": "tiny_sd15_fine_tune.safetensors", "base_checkpoint": "tiny_sd15_base.safetensors"}


def tiny_sd15_pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(fine-tune, base): SD1.5 UNet tensors of the tiny UNet's main path, the fine-tune its base
    plus a seeded change of every tensor (as a fine-tune changes them all)."""
    from tiny_sd15 import sd15_unet

    base, change = sd15_unet(10, context_dim=TEXT_WIDTH), sd15_unet(11, context_dim=TEXT_WIDTH)
    return {key: value + 0.05 * change[key] for key, value in base.items()}, base


def write_tiny_sd15_checkpoints(models_dir: Path) -> dict[str, Path]:
    """The tiny fine-tune and base (`tiny_sd15_pair`) as models/checkpoints/ files; their paths by
    Graft Checkpoint input."""
    from tiny_sd15 import write_sd15

    folder = Path(models_dir) / "checkpoints"
    return {name: write_sd15(folder / TINY_SD15[name], unet) for name, unet in zip(TINY_SD15, tiny_sd15_pair())}


TINY_HYPERNETWORK = "tiny_hypernetwork.pt"  # in models/hypernetworks


def write_tiny_hypernetwork(models_dir: Path, seed: int = 0) -> Path:
    """A tiny hypernetwork in the A1111 layout ComfyUI's HypernetworkLoader reads: for the prompt
    width, two small residual MLPs (for the keys and the values of cross-attention)."""
    from seeded_weights import save_state_dict, seeded_state_dict

    shapes = {
        "linear.0.weight": (2 * TEXT_WIDTH, TEXT_WIDTH),
        "linear.0.bias": (2 * TEXT_WIDTH,),
        "linear.1.weight": (TEXT_WIDTH, 2 * TEXT_WIDTH),
        "linear.1.bias": (TEXT_WIDTH,),
    }
    layers = [
        seeded_state_dict({key: torch.Size(shape) for key, shape in shapes.items()}, seed + index) for index in range(2)
    ]
    return save_state_dict(
        {TEXT_WIDTH: layers, "activation_func": "linear", "is_layer_norm": False},
        Path(models_dir) / "hypernetworks" / TINY_HYPERNETWORK,
    )


def write_tiny_model_folders(models_dir: Path) -> dict[str, Path]:
    """Everything a test ComfyUI instance gets in its models/ folder: the tiny set in flashface/, the
    tiny LoRA in loras/, the tiny ControlNets and T2I-Adapters in controlnet/ with their UNets, the
    tiny hypernetwork in hypernetworks/; the paths of the tiny set."""
    paths = write_tiny_models(Path(models_dir) / "flashface")
    write_tiny_lora(models_dir)
    write_tiny_controlnets(models_dir)
    write_tiny_hypernetwork(models_dir)
    write_tiny_sd15_checkpoints(models_dir)
    return paths


def use_tiny_models(prompt: dict) -> dict:
    """Point every FlashFace Load Model node of an API-format prompt at the tiny files (the width-64
    UNet where a ControlNet steers it), every stock LoRA loader at the tiny LoRA, every ControlNet
    loader at the tiny ControlNet and every Graft Checkpoint at the tiny SD1.5 pair."""
    with_controlnet = any(node["class_type"] == "ControlNetLoader" for node in prompt.values())
    for node in prompt.values():
        if node["class_type"] == "FlashFace_LoadModel":
            node["inputs"].update(TINY_MODELS)
            if with_controlnet:
                node["inputs"]["unet_name"] = CONTROLNET_UNET
        elif node["class_type"] == "LoraLoaderModelOnly":
            node["inputs"]["lora_name"] = TINY_LORA
        elif node["class_type"] == "ControlNetLoader":
            node["inputs"]["control_net_name"] = TINY_CONTROLNETS["random"]
        elif node["class_type"] == "FlashFace_GraftCheckpoint":
            node["inputs"].update(TINY_SD15)
    return prompt


@contextmanager
def tiny_model_server(workdir: Path, install=None):
    """A running ComfyUI test server with the tiny models in models/flashface and the bundled
    workflows' example photos in input/ (`comfy_server.running_server`); stopped afterwards."""
    from comfy_server import running_server

    with running_server(workdir, install, models=write_tiny_model_folders) as server:
        yield server
