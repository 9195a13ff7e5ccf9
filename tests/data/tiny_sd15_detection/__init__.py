"""A test-only node pack (no nodes): teaches the test server's ComfyUI to recognise the tests' tiny
SD1.5 UNets (tests/tiny_sd15.py: 32 channels, 32-wide text) as SD1.5, as it recognises a real one
(320 channels, 768-wide text), so that its own loaders (Load Diffusion Model, Load Checkpoint) load
them and its merge nodes can be tried against FlashFace Graft Checkpoint. Test scaffolding only:
the pack itself never changes ComfyUI."""

import comfy.supported_models


class TinySD15(comfy.supported_models.SD15):
    unet_config = {**comfy.supported_models.SD15.unet_config, "context_dim": 32, "model_channels": 32}


comfy.supported_models.models.insert(0, TinySD15)

NODE_CLASS_MAPPINGS = {}
