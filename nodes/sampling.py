"""FlashFace inside ComfyUI's own sampling: FlashFace Apply (a MODEL for KSampler and
SamplerCustom) and FlashFace Sigmas (the official noise levels as SIGMAS)."""

from __future__ import annotations

from ..flashface.people import PeopleLayout, as_people
from ..flashface.sampling.guidance import RowGuidance
from ..flashface.sampling.noise_levels import vp_to_ve
from ..flashface.sampling.schedule import NoiseSchedule, sampling_sigmas
from ..flashface.settings import MAX_SEED, GenerationSettings
from .comfy_model import guided_model
from .declare import FlashFaceNode, box_inputs, outputs, setting_input, settings_from_inputs
from .inputs import expect_conditioning, expect_mask
from .load_model import expect_model, model_input
from .people import faces_or_people, people_input

REFERENCE_SETTINGS = (
    "reference_feature_strength",
    "reference_feature_strength_before_launch",
    "reference_guidance_strength",
    "launch_timestep",
)


class FlashFaceApply(FlashFaceNode):
    """Makes the FlashFace UNet a MODEL for KSampler, SamplerCustom and the other sampling nodes:
    it samples with the reference faces (one reference pass per model evaluation, shared by the
    rows of the step), the face position, and reference guidance once launched (a third branch: the
    positive prompt with the references). The sampler's cfg is the text guidance. Use FlashFace
    CLIP Text Encode's CONDITIONING outputs as positive and negative, and FlashFace VAE Encode /
    Decode for latents (img2img, inpainting with Set Latent Noise Mask)."""

    SEARCH_ALIASES = ["flashface model", "ksampler", "face id model", "identity model", "apply flashface"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("model", "MODEL", "The FlashFace UNet with these references, for KSampler or a guider.")
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input(),
                "negative": (
                    "CONDITIONING",
                    {
                        "tooltip": "The negative prompt given to the sampler (FlashFace CLIP Text Encode's negative "
                        "output): the reference faces are encoded with it as context, as officially."
                    },
                ),
                **{name: setting_input(name) for name in REFERENCE_SETTINGS},
                **box_inputs(),
                "pad_references": setting_input("pad_references"),
                "padding_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "tooltip": "Seed of the choice of faces that pads 1-3 faces to four. The Generator uses its "
                        "seed; give the same here for the same references.",
                    },
                ),
            },
            "optional": {
                "reference_faces": ("IMAGE", {"tooltip": "Face crops of one person, from FlashFace Detect Face."}),
                "face_mask": ("MASK", {"tooltip": "Where the face goes (white = face); replaces the face box."}),
                "people": people_input(
                    "Several people, each with their own faces and place (from FlashFace Person), "
                    "in place of reference_faces, the face box and face_mask."
                ),
            },
        }

    def apply(
        self, flashface_model, negative, padding_seed, reference_faces=None, face_mask=None, people=None, **inputs
    ):
        expect_model(flashface_model)
        context = expect_conditioning(negative, "negative", flashface_model.prompt_width)
        faces = faces_or_people(reference_faces, people)
        if face_mask is not None:
            face_mask = expect_mask(face_mask, "face_mask")
        settings = settings_from_inputs(inputs)
        people = as_people(faces, settings.face_box, face_mask)
        layout = PeopleLayout.of(people, padding_seed if settings.pad_references else None)
        latents = flashface_model.vae_codec().encode_people(people)
        guidance = RowGuidance(latents.cpu(), context.cpu().expand(len(latents), -1, -1), settings, layout)
        return (guided_model(flashface_model.unet, guidance),)


class FlashFaceSigmas(FlashFaceNode):
    """The noise levels of the official FlashFace sampler as SIGMAS, for SamplerCustom: with the
    ddim (or euler) sampler they give the official DDIM run."""

    SEARCH_ALIASES = ["flashface scheduler", "official sigmas", "trailing"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("sigmas", "SIGMAS", "Descending noise levels ending in 0, in ComfyUI's (variance-exploding) scale.")
    )
    FUNCTION = "sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {name: setting_input(name) for name in ("steps", "discretization", "sigma_spacing")}}

    def sigmas(self, steps, discretization, sigma_spacing):
        settings = GenerationSettings(steps=steps, discretization=discretization, sigma_spacing=sigma_spacing)
        levels = sampling_sigmas(NoiseSchedule(), settings.steps, settings.discretization, settings.sigma_spacing)
        return (vp_to_ve(levels.double()).float(),)
