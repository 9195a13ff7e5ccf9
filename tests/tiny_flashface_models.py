"""One set of tiny seeded FlashFace models that fit together, for the ComfyUI tests and benches.

UNet context width == CLIP width (32), a 4-level VAE (factor 8, z_dim 4), and the real-size
RetinaFace (it has one size). File names are deliberately not the official ones: an official
name makes Load Model verify the file against the real checksum.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

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


def use_tiny_models(prompt: dict) -> dict:
    """Point every FlashFace Load Model node of an API-format prompt at the tiny files, and every
    stock LoRA loader at the tiny LoRA."""
    for node in prompt.values():
        if node["class_type"] == "FlashFace_LoadModel":
            node["inputs"].update(TINY_MODELS)
        elif node["class_type"] == "LoraLoaderModelOnly":
            node["inputs"]["lora_name"] = TINY_LORA
    return prompt


@contextmanager
def tiny_model_server(workdir: Path, install=None):
    """A running ComfyUI test server (comfy_server.ComfyServer) with the tiny models in
    models/flashface and the bundled workflows' example photos in input/; stopped afterwards."""
    from comfy_server import REPO_ROOT, ComfyServer

    server = ComfyServer(Path(workdir), install)
    server.prepare()
    write_tiny_models(server.models_dir / "flashface")
    write_tiny_lora(server.models_dir)
    for photo in (REPO_ROOT / "workflows" / "input").iterdir():
        shutil.copy(photo, server.input_dir / photo.name)
    server.start()
    try:
        yield server
    finally:
        server.stop()
