"""FlashFace Generator: reference faces + conditioning -> IMAGE and LATENT, with progress and cancel."""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview

from ..flashface.models.vae import LATENT_SCALE
from ..flashface.pipeline import FlashFacePipeline
from ..flashface.prompts import EncodedPrompt
from ..flashface.settings import PRESETS, GenerationSettings
from .cancel import comfy_cancel
from .declare import FlashFaceNode, box_inputs, outputs, setting_input, settings_from_inputs
from .inputs import expect, expect_mask
from .load_model import expect_model, model_input
from .people import faces_or_people, people_input
from .text_encode import FLASHFACE_CONDITIONING

NO_PRESET = "none"
# Settings that are optional inputs, so that prompts saved before they existed still run (with
# the official default).
OPTIONAL_SETTINGS = ("prompt_postfixes", "reference_feature_strength_before_launch", "pad_references")
REQUIRED_SETTINGS = (
    "seed",
    "steps",
    "solver",
    "discretization",
    "sigma_spacing",
    "text_guidance",
    "reference_feature_strength",
    "reference_guidance_strength",
    "launch_timestep",
)
SIZE_SETTINGS = ("width", "height", "batch_size")


def _preset_help() -> str:
    described = "; ".join(
        f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.items()) for name, values in PRESETS.items()
    )
    return (
        f"Settings recommended by the FlashFace authors; a preset replaces the inputs it names. "
        f"{NO_PRESET}: use the inputs as set. {described}."
    )


def _settings(inputs: dict, preset: str) -> GenerationSettings:
    settings = settings_from_inputs(inputs)
    return settings if preset == NO_PRESET else settings.with_preset(preset)


class FlashFaceGenerator(FlashFaceNode):
    """Generates new images of the person in the reference faces, following the prompt. The face box
    (or a mask) says where the face goes. Shows every step with a preview; Cancel stops it between
    two steps.
    """

    SEARCH_ALIASES = [
        "face id",
        "identity",
        "portrait",
        "same person",
        "face swap",
        "instantid",
        "pulid",
        "ipadapter faceid",
        "photomaker",
        "sampler",
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("images", "IMAGE", "The generated images."),
        (
            "latent",
            "LATENT",
            "The final latents in ComfyUI's convention (unscaled), for latent upscaling or VAE "
            "Decode. ComfyUI's own VAE Decode gives the 'standard' VAE attention of Load Model, not "
            "the official one; the images output uses the attention chosen there.",
        ),
    )
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input(),
                "positive": (FLASHFACE_CONDITIONING, {"tooltip": "The prompt, from FlashFace CLIP Text Encode."}),
                "negative": (
                    FLASHFACE_CONDITIONING,
                    {
                        "tooltip": "What to avoid, from FlashFace CLIP Text Encode (also the context of the reference "
                        "faces, as in the official code)."
                    },
                ),
                **{name: setting_input(name) for name in REQUIRED_SETTINGS},
                **box_inputs(),
                **{name: setting_input(name) for name in SIZE_SETTINGS},
                "preset": ([NO_PRESET, *PRESETS], {"default": NO_PRESET, "tooltip": _preset_help()}),
            },
            "optional": {
                "reference_faces": (
                    "IMAGE",
                    {
                        "tooltip": "Face crops of one person, from FlashFace Detect Face (1 to 4 is typical; more is "
                        "allowed). Other images are padded to a square and used as they are."
                    },
                ),
                "face_mask": (
                    "MASK",
                    {
                        "tooltip": "Where the face goes (white = face); replaces the face box. Any size: it is "
                        "resized to the image."
                    },
                ),
                "people": people_input(
                    "Several people, each with their own faces and place (from FlashFace Person), "
                    "in place of reference_faces, the face box and face_mask."
                ),
                **{name: setting_input(name) for name in OPTIONAL_SETTINGS},
            },
        }

    def generate(
        self,
        flashface_model,
        positive,
        negative,
        reference_faces=None,
        preset=NO_PRESET,
        face_mask=None,
        people=None,
        **inputs,
    ):
        expect_model(flashface_model)
        for name, prompt in (("positive", positive), ("negative", negative)):
            expect(
                prompt,
                EncodedPrompt,
                name,
                "FlashFace CLIP Text Encode (ComfyUI's own CLIP Text Encode cannot "
                "be used: FlashFace needs its own text encoding)",
            )
        faces = faces_or_people(reference_faces, people)
        if face_mask is not None:
            face_mask = expect_mask(face_mask, "face_mask")
        settings = _settings(inputs, preset)

        unet, vae = flashface_model.ready("unet", "vae")
        pipeline = FlashFacePipeline(
            unet, vae, device=flashface_model.device("unet"), vae_device=flashface_model.device("vae")
        )
        bar = comfy.utils.ProgressBar(settings.steps)
        previewer = latent_preview.get_previewer(flashface_model.device("unet"), comfy.latent_formats.SD15())

        def progress(step: int, total: int, x0) -> None:
            preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
            bar.update_absolute(step + 1, total, preview)

        with comfy_cancel() as should_cancel:
            result = pipeline.generate(
                faces,
                positive,
                negative,
                settings,
                face_mask=face_mask,
                output_device=mm.intermediate_device(),
                progress=progress,
                should_cancel=should_cancel,
            )
        return (result.images, {"samples": result.latents / LATENT_SCALE})
