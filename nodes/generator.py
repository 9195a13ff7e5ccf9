"""FlashFace Generator: reference faces + conditioning -> IMAGE and LATENT, with progress and cancel."""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview

from ..flashface.errors import GenerationCancelled
from ..flashface.models.vae import LATENT_SCALE
from ..flashface.pipeline import DEFAULT_FACE_BOX, PRESETS, FlashFacePipeline
from ..flashface.prompts import NEGATIVE_POSTFIX, POSITIVE_POSTFIX, EncodedPrompt
from ..flashface.sampling.schedule import DISCRETIZATIONS, SPACINGS
from ..flashface.sampling.solvers import SOLVERS
from .images import image_batches_to_pil
from .inputs import expect, expect_mask
from .load_model import FLASHFACE_MODEL, FlashFaceModel
from .text_encode import FLASHFACE_CONDITIONING

NO_PRESET = "none"
MAX_SIZE = 4096
BOX_CORNERS = (("face_x1", "left"), ("face_y1", "top"), ("face_x2", "right"), ("face_y2", "bottom"))


def _preset_help() -> str:
    described = "; ".join(f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.items())
                          for name, values in PRESETS.items())
    return (f"Settings recommended by the FlashFace authors; a preset replaces the inputs it names. "
            f"{NO_PRESET}: use the inputs as set. {described}.")


class FlashFaceGenerator:
    SEARCH_ALIASES = ["face id", "identity", "portrait", "same person", "face swap", "instantid", "pulid",
                      "ipadapter faceid", "photomaker", "sampler"]
    DESCRIPTION = ("Generates new images of the person in the reference faces, following the prompt. The face "
                   "box (or a mask) says where the face goes. Shows every step with a preview; Cancel stops it "
                   "between two steps.")
    CATEGORY = "FlashFace"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The generated images.",
                       "The final latents in ComfyUI's convention (unscaled), for latent upscaling or VAE Decode. "
                       "ComfyUI's own VAE Decode gives the 'standard' VAE attention of Load Model, not the official "
                       "one; the images output uses the attention chosen there.")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        box = {"min": 0.0, "max": 1.0, "step": 0.01}
        corner_tips = {
            "face_x1": "Left edge of the face box, as a fraction of the image width.",
            "face_y1": "Top edge of the face box, as a fraction of the image height.",
            "face_x2": "Right edge of the face box, as a fraction of the image width.",
            "face_y2": "Bottom edge of the face box, as a fraction of the image height.",
        }
        square_note = (" As in the official code the face area is the square of the box's longer side, anchored at "
                       "its top-left corner; all four at 0 means no position hint.")
        return {
            "required": {
                "flashface_model": (FLASHFACE_MODEL, {"tooltip": "From FlashFace Load Model."}),
                "positive": (FLASHFACE_CONDITIONING, {"tooltip": "The prompt, from FlashFace CLIP Text Encode."}),
                "negative": (FLASHFACE_CONDITIONING, {
                    "tooltip": "What to avoid, from FlashFace CLIP Text Encode (also the context of the reference "
                               "faces, as in the official code)."}),
                "reference_faces": ("IMAGE", {
                    "tooltip": "Face crops of one person, from FlashFace Detect Face (1 to 4 is typical; more is "
                               "allowed). Other images are padded to a square and used as they are."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Random seed of the initial noise (drawn on the CPU, so a seed gives "
                                            "the same image on every device)."}),
                "steps": ("INT", {"default": 35, "min": 1, "max": 200,
                                  "tooltip": "Sampling steps (official: 35). Fewer is faster but rougher."}),
                "solver": (list(SOLVERS), {"default": "ddim",
                                           "tooltip": "Sampling method. ddim is the official one."}),
                "discretization": (list(DISCRETIZATIONS), {
                    "default": "trailing",
                    "tooltip": "How the steps are spread over the 1000 training timesteps. trailing is the official "
                               "choice."}),
                "sigma_spacing": (list(SPACINGS), {
                    "default": "timesteps",
                    "tooltip": "timesteps: noise levels at the chosen timesteps (official). karras: Karras et al. "
                               "spacing between the same end points."}),
                "text_guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                            "tooltip": "How strongly the prompt is followed (CFG, official 7.5)."}),
                "reference_feature_strength": ("FLOAT", {
                    "default": 1.2, "min": 0.0, "max": 3.0, "step": 0.05,
                    "tooltip": "Weight of the reference faces' features inside the network (λ, official 1.2, useful "
                               "0.8-1.3). Lower gives the prompt more freedom (e.g. age changes)."}),
                "reference_guidance_strength": ("FLOAT", {
                    "default": 3.2, "min": 0.0, "max": 10.0, "step": 0.1,
                    "tooltip": "Extra guidance towards the reference identity once launched (official 3.2, range "
                               "1.8-4). 0 turns it off."}),
                "launch_timestep": ("INT", {
                    "default": 750, "min": 0, "max": 1000, "step": 1,
                    "tooltip": "A diffusion timestep on the 0-1000 scale (not a step number): reference guidance "
                               "starts once sampling reaches timesteps at or below it (official 750)."}),
                **{name: ("FLOAT", {**box, "default": value, "tooltip": corner_tips[name] + square_note})
                   for (name, _), value in zip(BOX_CORNERS, DEFAULT_FACE_BOX)},
                "width": ("INT", {"default": 768, "min": 64, "max": MAX_SIZE, "step": 8,
                                  "tooltip": "Image width in pixels, a multiple of 8 (official: 768)."}),
                "height": ("INT", {"default": 768, "min": 64, "max": MAX_SIZE, "step": 8,
                                   "tooltip": "Image height in pixels, a multiple of 8 (official: 768)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "How many images to generate at once."}),
                "preset": ([NO_PRESET, *PRESETS], {"default": NO_PRESET, "tooltip": _preset_help()}),
            },
            "optional": {
                "face_mask": ("MASK", {
                    "tooltip": "Where the face goes (white = face); replaces the face box. Any size: it is "
                               "resized to the image."}),
                # Optional widgets, so that prompts saved before they existed still run (with the default).
                "prompt_postfixes": ("BOOLEAN", {
                    "default": True,
                    "tooltip": f"Add the official quality words to the positive prompt ('{POSITIVE_POSTFIX}') and "
                               f"the official negative list to the negative prompt ('{NEGATIVE_POSTFIX[:48]}...', "
                               f"alone when the negative is empty), as the official FlashFace demo always does. "
                               f"Off: both prompts are used as written."}),
                "reference_feature_strength_before_launch": ("FLOAT", {
                    "default": 0.85, "min": 0.0, "max": 3.0, "step": 0.05,
                    "tooltip": "λ0: weight of the reference faces' features before the launch timestep, while "
                               "reference guidance is not yet running (official 0.85)."}),
                "pad_references": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "With 1 to 3 reference faces, repeat faces chosen at random (from the seed) until there "
                               "are four, as the official FlashFace demo always does: the model was only run with four "
                               "references. Off: each face is used once."}),
            },
        }

    def generate(self, flashface_model, positive, negative, reference_faces, seed, steps, solver, discretization,
                 sigma_spacing, text_guidance, reference_feature_strength, reference_guidance_strength,
                 launch_timestep, face_x1, face_y1, face_x2, face_y2, width, height, batch_size, preset,
                 face_mask=None, prompt_postfixes=True, reference_feature_strength_before_launch=0.85,
                 pad_references=True):
        expect(flashface_model, FlashFaceModel, "flashface_model", "FlashFace Load Model")
        for name, prompt in (("positive", positive), ("negative", negative)):
            expect(prompt, EncodedPrompt, name, "FlashFace CLIP Text Encode (ComfyUI's own CLIP Text Encode cannot "
                                                "be used: FlashFace needs its own text encoding)")
        faces = image_batches_to_pil([reference_faces], "reference_faces")
        if face_mask is not None:
            face_mask = expect_mask(face_mask, "face_mask")
        settings = dict(guidance_scale=text_guidance, reference_strength=reference_feature_strength,
                        strength_before_launch=reference_feature_strength_before_launch,
                        reference_guidance=reference_guidance_strength, launch_timestep=launch_timestep,
                        face_box=(face_x1, face_y1, face_x2, face_y2))
        for name in PRESETS.get(preset, {}):
            settings[name] = None  # the preset's value

        unet, vae = flashface_model.ready("unet", "vae")
        pipeline = FlashFacePipeline(unet, vae, device=flashface_model.device("unet"),
                                     vae_device=flashface_model.device("vae"))
        bar = comfy.utils.ProgressBar(steps)
        previewer = latent_preview.get_previewer(flashface_model.device("unet"), comfy.latent_formats.SD15())

        def progress(step: int, total: int, x0) -> None:
            preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
            bar.update_absolute(step + 1, total, preview)

        try:
            result = pipeline.generate(
                faces, positive, negative, seed=seed, steps=steps, solver=solver,
                discretization=discretization, sigma_spacing=sigma_spacing, face_mask=face_mask, width=width,
                height=height, num_samples=batch_size, preset=None if preset == NO_PRESET else preset,
                pad_references=pad_references, prompt_postfixes=prompt_postfixes,
                output_device=mm.intermediate_device(), progress=progress,
                should_cancel=mm.processing_interrupted, **settings)
        except GenerationCancelled as cancelled:
            raise mm.InterruptProcessingException() from cancelled
        return (result.images, {"samples": result.latents / LATENT_SCALE})
