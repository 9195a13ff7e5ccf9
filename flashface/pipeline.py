"""FlashFace generation: reference faces + prompt → images, holding the loaded networks.

Seeds and noise. A seed gives the same images on every device by default (``noise="cpu"``: the
initial latent is drawn from a CPU ``torch.Generator`` seeded with it, then moved to the
device, as ComfyUI does). ``noise="device"`` draws it on the model's device instead
(``torch.empty(...).normal_()`` with a generator of that device), which on CUDA is the official
code's noise for the same seed. Stochastic solvers keep drawing from the same generator. The
optional padding of the references to four uses ``random.Random(seed)``, consumed as the
official demo consumes the seeded global ``random``. No global RNG is ever seeded.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import FaceDetectionError, InvalidInputError
from .face import crop_face, detect_faces, largest_face, prepare_reference
from .models.vae import LATENT_SCALE
from .sampling.guidance import GuidanceSettings, ReferenceGuidedDenoiser
from .sampling.mask import box_mask, latent_size, resize_mask
from .sampling.schedule import NoiseSchedule, sampling_sigmas
from .sampling.solvers import get_solver

logger = logging.getLogger(__name__)

DEFAULT_POSITIVE_POSTFIX = "best quality, masterpiece,ultra-detailed, UHD 4K, photographic"
DEFAULT_NEGATIVE_POSTFIX = (
    "blurry, ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, "
    "extra limbs, disfigured, deformed, body out of frame, bad anatomy, watermark, signature, cut off, "
    "low contrast, underexposed, overexposed, bad art, beginner, amateur, distorted face"
)
DEFAULT_FACE_BOX = (0.3, 0.1, 0.6, 0.4)
OFFICIAL_REFERENCE_COUNT = 4
NOISE_SOURCES = ("cpu", "device")

# The paper's recommended settings (official readme); explicit arguments override them.
PRESETS: dict[str, dict] = {
    "id_fidelity": dict(face_box=(0.3, 0.2, 0.6, 0.5), reference_strength=1.2, reference_guidance=3.2,
                        launch_timestep=750),
    "age_change": dict(guidance_scale=8.5, reference_strength=0.9, reference_guidance=2.5, launch_timestep=750),
}
_FALLBACKS = dict(guidance_scale=7.5, reference_guidance=3.2, reference_strength=1.2, launch_timestep=750,
                  face_box=DEFAULT_FACE_BOX)

Progress = Callable[[int, int, torch.Tensor], None]
Prompt = str | torch.Tensor


def resolve_settings(preset: str | None, **explicit) -> dict:
    """Each of guidance_scale, reference_guidance, reference_strength, launch_timestep, face_box:
    the explicit value unless None, else the preset's, else the official UI default."""
    if preset is not None and preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    chosen = {**_FALLBACKS, **PRESETS.get(preset, {})}
    chosen.update((name, value) for name, value in explicit.items() if value is not None)
    return chosen


def with_official_postfixes(prompt: str, negative_prompt: str) -> tuple[str, str]:
    """The official demo's prompts: positive + ", " + quality postfix; negative + ", " + default
    negative, or the default negative alone when the negative is empty."""
    negative = f"{negative_prompt}, {DEFAULT_NEGATIVE_POSTFIX}" if negative_prompt else DEFAULT_NEGATIVE_POSTFIX
    return f"{prompt}, {DEFAULT_POSITIVE_POSTFIX}", negative


def padded_reference_indices(available: int, seed: int, count: int = OFFICIAL_REFERENCE_COUNT) -> list[int]:
    """The official padding: all faces, then random choices among them until there are `count`."""
    rng = random.Random(seed)
    indices = list(range(available))
    while len(indices) < count:
        indices.append(rng.choice(range(available)))
    return indices


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device, source: str
                  ) -> tuple[torch.Tensor, torch.Generator]:
    """Unit Gaussian latent noise and the generator it came from (see the module docstring)."""
    if source == "cpu":
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=generator).to(device), generator
    if source == "device":
        generator = torch.Generator(device).manual_seed(seed)
        return torch.empty(shape, device=device).normal_(generator=generator), generator
    raise InvalidInputError(f"unknown noise source {source!r}; choose one of {', '.join(NOISE_SOURCES)}.")


@dataclass
class GenerationResult:
    images: torch.Tensor  # [B,H,W,3] float32 in [0,1], on the CPU
    latents: torch.Tensor  # [B,4,h,w] final latents (scaled by LATENT_SCALE), on the CPU
    seed: int
    model_timesteps: list[int] = field(default_factory=list)

    def to_pil(self) -> list[Image.Image]:
        """8-bit images, truncated like the official output (x·127.5 + 127.5 → uint8)."""
        pixels = (self.images * 255).clamp(0, 255).to(torch.uint8).numpy()
        return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


class FlashFacePipeline:
    """The loaded networks and `generate`. `detector` is only needed by `crop_reference_faces`."""

    def __init__(self, unet, vae, text_encoder, detector=None, schedule: NoiseSchedule | None = None):
        self.unet, self.vae, self.text_encoder, self.detector = unet, vae, text_encoder, detector
        self.schedule = schedule or NoiseSchedule()

    def crop_reference_faces(self, photos: Sequence[Image.Image], threshold: float = 0.6) -> list[Image.Image]:
        """One official face crop per photo (the largest face when there are several)."""
        if self.detector is None:
            raise InvalidInputError("No face detector is loaded; load one or pass face crops directly.")
        crops = []
        for index, photo in enumerate(photos, 1):
            faces = detect_faces(self.detector, photo, threshold)
            if not faces:
                raise FaceDetectionError(
                    f"No face found in reference photo {index} (detection threshold {threshold}). "
                    "Use a photo where the face is clearly visible, lower the threshold, or pass a face crop.")
            if len(faces) > 1:
                logger.warning("reference photo %d has %d faces; using the largest", index, len(faces))
            crops.append(crop_face(photo, largest_face(faces)))
        return crops

    def encode_prompts(self, prompt: Prompt, negative_prompt: Prompt, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch,77,C] each. A prompt is text, or embeddings [1,77,C] encoded beforehand (ComfyUI
        encodes in a node of its own, so no text encoder is needed while sampling)."""
        texts = [p for p in (prompt, negative_prompt) if isinstance(p, str)]
        if texts and self.text_encoder is None:
            raise InvalidInputError("No text encoder is loaded; load one or pass encoded prompts.")
        encoded = iter(self.text_encoder.encode(texts).float() if texts else ())
        embeddings = [next(encoded)[None] if isinstance(p, str) else p.float() for p in (prompt, negative_prompt)]
        for name, value in zip(("prompt", "negative prompt"), embeddings):
            if value.dim() != 3 or value.shape[0] != 1:
                raise InvalidInputError(f"The encoded {name} must have shape [1, tokens, width], got {list(value.shape)}.")
        return embeddings[0].expand(batch, -1, -1), embeddings[1].expand(batch, -1, -1)

    def encode_references(self, faces: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Reference latents [N,4,28,28] (scaled) from face crops or prepared tensors [N,3,224,224]."""
        if isinstance(faces, torch.Tensor):
            images = faces
        else:
            images = torch.stack([prepare_reference(face) for face in faces]) if len(faces) else torch.empty(0)
        if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] != 3:
            raise InvalidInputError("Give at least one reference face (a face crop, or a [N,3,224,224] tensor).")
        device, dtype = _module_device_dtype(self.vae)
        with torch.no_grad():
            return self.vae.encode(images.to(device, dtype)).float() * LATENT_SCALE

    @torch.no_grad()
    def generate(
        self,
        reference_faces: Sequence[Image.Image] | torch.Tensor,
        prompt: Prompt,
        negative_prompt: Prompt = "",
        *,
        seed: int = 0,
        steps: int = 35,
        solver: str = "ddim",
        discretization: str = "trailing",
        sigma_spacing: str = "timesteps",
        guidance_scale: float | None = None,
        reference_guidance: float | None = None,
        reference_strength: float | None = None,
        strength_before_launch: float = 0.85,
        launch_timestep: int | None = None,
        face_box: Sequence[float] | None = None,
        face_mask: torch.Tensor | None = None,
        width: int = 768,
        height: int = 768,
        num_samples: int = 1,
        pad_references_to_four: bool = False,
        prompt_postfixes: bool = False,
        noise: str = "cpu",
        preset: str | None = None,
        progress: Progress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate `num_samples` images of the reference person.

        Parameters left as None come from `preset` (see PRESETS), else from the official UI
        defaults (g 7.5, c 3.2, λ 1.2, launch 750, box [0.3, 0.1, 0.6, 0.4]). Prompts are text
        or embeddings [1,77,C] (see `encode_prompts`). `face_mask`
        (a [H',W'] mask in [0,1]) replaces the box; an all-zero box means no position hint.
        `progress(step, total, x0)` is called after every solver step, `should_cancel()` before
        each (raising GenerationCancelled).
        """
        chosen = resolve_settings(preset, guidance_scale=guidance_scale, reference_guidance=reference_guidance,
                                  reference_strength=reference_strength, launch_timestep=launch_timestep,
                                  face_box=face_box)
        if num_samples < 1:
            raise InvalidInputError(f"num_samples must be at least 1, got {num_samples}.")
        h, w = latent_size(width, height)
        device, _ = _module_device_dtype(self.unet)

        faces = reference_faces
        if pad_references_to_four and 0 < len(faces) < OFFICIAL_REFERENCE_COUNT:
            indices = padded_reference_indices(len(faces), seed)
            faces = faces[indices] if isinstance(faces, torch.Tensor) else [faces[i] for i in indices]
        reference_latents = self.encode_references(faces).to(device)

        if prompt_postfixes:
            if not (isinstance(prompt, str) and isinstance(negative_prompt, str)):
                raise InvalidInputError("prompt_postfixes needs the prompts as text, not encoded.")
            prompt, negative_prompt = with_official_postfixes(prompt, negative_prompt)
        positive, negative = self.encode_prompts(prompt, negative_prompt, num_samples)
        mask = resize_mask(face_mask, width, height) if face_mask is not None else box_mask(chosen["face_box"], width, height)

        settings = GuidanceSettings(
            guidance_scale=chosen["guidance_scale"], reference_guidance=chosen["reference_guidance"],
            reference_strength=chosen["reference_strength"], strength_before_launch=strength_before_launch,
            launch_timestep=chosen["launch_timestep"])
        denoiser = ReferenceGuidedDenoiser(self.unet, self.schedule, positive.to(device), negative.to(device),
                                           reference_latents, mask.to(device), settings)
        sigmas = sampling_sigmas(self.schedule, steps, discretization, sigma_spacing)
        run_solver = get_solver(solver)
        x, generator = initial_noise((num_samples, 4, h, w), seed, device, noise)
        logger.info("sampling %d step(s) with %s, %d reference(s), %dx%d, seed %d", len(sigmas) - 1, solver,
                    len(reference_latents), width, height, seed)
        latents = run_solver(denoiser, x, sigmas, callback=progress, should_cancel=should_cancel, generator=generator)

        vae_device, vae_dtype = _module_device_dtype(self.vae)
        decoded = self.vae.decode((latents / LATENT_SCALE).to(vae_device, vae_dtype)).float()
        images = ((decoded + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        return GenerationResult(images=images, latents=latents.float().cpu(), seed=seed,
                                model_timesteps=denoiser.model_timesteps)
