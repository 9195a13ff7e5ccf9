"""FlashFace VAE Encode / Decode: ComfyUI LATENTs with the FlashFace VAE (its official mid-block
attention), for the MODEL path (img2img, inpainting, hires chains)."""

from __future__ import annotations

import comfy.model_management as mm

from ..flashface.errors import InvalidInputError
from ..flashface.models.vae import LATENT_SCALE
from ..flashface.pipeline import official_levels
from ..flashface.sampling.mask import LATENT_FACTOR
from .cancel import comfy_cancel
from .declare import FlashFaceNode, outputs
from .inputs import expect_image, expect_latent
from .load_model import expect_model, model_input


class FlashFaceVAEEncode(FlashFaceNode):
    """Encodes images into a LATENT with the FlashFace VAE (the posterior mean, as FlashFace
    encodes), for KSampler's img2img (denoise below 1) and Set Latent Noise Mask. Sides that are
    not multiples of 8 lose their last rows or columns: the picture keeps its top-left corner, so
    the decoded image pasted back at x = y = 0 (ImageCompositeMasked) lines up with it, and a mask
    made at the picture's size covers the same pixels (ComfyUI's own VAE Encode crops centred)."""

    SEARCH_ALIASES = ["vae encode", "img2img", "encode image"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("latent", "LATENT", "The images' latents in ComfyUI's convention (unscaled).")
    )
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input("VAE"),
                "pixels": ("IMAGE", {"tooltip": "The images to encode."}),
            }
        }

    def encode(self, flashface_model, pixels):
        flashface_model = expect_model(flashface_model)
        pixels = expect_image(pixels, "pixels")
        pixels = pixels[None] if pixels.dim() == 3 else pixels
        h, w = (side // LATENT_FACTOR * LATENT_FACTOR for side in pixels.shape[1:3])
        if h == 0 or w == 0:
            raise InvalidInputError(
                f"The pixels input is {pixels.shape[2]}x{pixels.shape[1]} pixels; the VAE needs "
                f"at least {LATENT_FACTOR} on each side."
            )
        pixels = pixels[:, :h, :w, :3]
        if pixels.shape[-1] == 1:
            pixels = pixels.expand(-1, -1, -1, 3)
        images = pixels.permute(0, 3, 1, 2).float() * 2 - 1
        with comfy_cancel() as should_cancel:
            latents = flashface_model.vae_codec().encode(images, should_cancel)
        return ({"samples": (latents / LATENT_SCALE).to(mm.intermediate_device())},)


class FlashFaceVAEDecode(FlashFaceNode):
    """Decodes a LATENT with the FlashFace VAE into the official 8-bit images (as the Generator's
    images output). Out of memory, it decodes one image at a time, then in tiles."""

    SEARCH_ALIASES = ["vae decode", "decode latent"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(("images", "IMAGE", "The decoded images."))
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input("VAE"),
                "samples": ("LATENT", {"tooltip": "Latents from KSampler or another sampler, or the Generator."}),
            }
        }

    def decode(self, flashface_model, samples):
        flashface_model = expect_model(flashface_model)
        latents = expect_latent(samples, "samples")
        with comfy_cancel() as should_cancel:
            decoded = flashface_model.vae_codec().decode(latents * LATENT_SCALE, should_cancel)
        return (official_levels(decoded).to(mm.intermediate_device()).float() / 255,)
