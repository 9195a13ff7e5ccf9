"""The nodes compute on the device ComfyUI's model management loads a network to, also when it loads
the UNet only partly (--lowvram, or a small GPU): ComfyUI then keeps the smallest modules, such as
the time embedding, on the CPU and casts their weights per call. With no GPU here the meta device
stands in for one: whatever computes on the CPU by mistake meets meta weights and fails."""

from __future__ import annotations

import pytest

from comfy_process import run_with_comfyui
from comfy_server import unavailable_reason

pytestmark = pytest.mark.comfyui

PARTIAL_LOAD = """
from pathlib import Path
from flashface_pack.flashface.prompts import EncodedPrompt
from flashface_pack.nodes import load_model
from flashface_pack.nodes.generator import FlashFaceGenerator

gpu = torch.device("meta")
unet = load_model._load_unet(Path({unet!r}), "fp32")
vae = load_model._load_vae(Path({vae!r}), "official")
unet.load_device = vae.load_device = gpu


def small_gpu(patchers, **options):
    # what load_models_gpu does on a GPU with room for half the UNet
    for patcher in patchers:
        if patcher is unet:
            patcher.load(gpu, lowvram_model_memory=patcher.model_size() // 2)
        else:
            patcher.load(gpu, full_load=True)


mm.load_models_gpu = small_gpu
mm.intermediate_device = lambda: gpu
model = load_model.FlashFaceModel(unet=unet, vae=vae, text_encoder=None, detector=None)
width = {width}
prompt = EncodedPrompt("x", *(torch.randn(1, 77, width) for _ in range(3)))
images, latent = FlashFaceGenerator().generate(
    model, prompt, prompt, torch.rand(2, 224, 224, 3), seed=1, steps=3, solver="ddim",
    discretization="trailing", sigma_spacing="timesteps", text_guidance=7.5, reference_feature_strength=1.2,
    reference_guidance_strength=3.2, launch_timestep=750, face_x1=0.3, face_y1=0.1, face_x2=0.6, face_y2=0.4,
    width=64, height=64, batch_size=2, preset="none")
devices = {{name: p.device.type for name, p in unet.model.named_parameters()}}
result = dict(images=[images.device.type, list(images.shape)],
              latent=[latent["samples"].device.type, list(latent["samples"].shape)],
              on_cpu=sorted(name for name, device in devices.items() if device == "cpu"),
              on_gpu=sum(device == "meta" for device in devices.values()), lowvram=bool(unet.model.model_lowvram))
"""


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_generator_runs_on_the_load_device_of_a_partially_loaded_unet(tiny_model_files, tmp_path):
    from tiny_flashface_models import TEXT_WIDTH

    snippet = PARTIAL_LOAD.format(unet=str(tiny_model_files["unet_name"]), vae=str(tiny_model_files["vae_name"]),
                                  width=TEXT_WIDTH)
    result = run_with_comfyui(snippet, tmp_path)
    assert result["lowvram"] and result["on_gpu"] > 0
    assert "time_embedding.0.weight" in result["on_cpu"]  # the case that used to send everything to the CPU
    assert result["images"] == ["meta", [2, 64, 64, 3]]
    assert result["latent"] == ["meta", [2, 4, 8, 8]]
