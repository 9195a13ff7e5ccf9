"""FlashFace generation: reference faces + prompt -> images, holding the loaded networks.

Defaults are the official demo's (`settings.GenerationSettings`): 1-3 reference faces are padded
to four (`pad_references`) and the official quality words are added to the prompts
(`prompt_postfixes`, see `prompts`).

Devices. Every network runs on the device it is given (`device` for the UNet, and optionally
one each for the VAE, text encoder and detector): nothing is inferred from where a network's
parameters happen to be, since ComfyUI's partial loading leaves small modules on the CPU while
the rest of the UNet computes on the GPU.

Seeds and noise. A seed gives the same images on every device by default (``noise="cpu"``: the
initial latent is drawn from a CPU ``torch.Generator`` seeded with it, then moved to the
device, as ComfyUI does). ``noise="device"`` draws it on the UNet's device instead
(``torch.empty(...).normal_()`` with a generator of that device), which on CUDA is the official
code's noise for the same seed. Stochastic solvers keep drawing from the same generator. The
padding of the references to four uses ``random.Random(seed)``, consumed as the official demo
consumes the seeded global ``random``; a face that stands several times is encoded and run
through the reference pass once (`people.PeopleLayout.copies`). No global RNG is ever seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .errors import CancelCheck, InvalidInputError
from .face import DEFAULT_DETECTION_THRESHOLD, find_reference_faces
from .models.clip_text import encode_texts
from .models.vae_codec import VAECodec
from .people import PeopleLayout, Person, as_people
from .prompts import EncodedPrompt, prompt_text
from .sampling.guidance import ReferenceGuidedDenoiser
from .sampling.mask import latent_size
from .sampling.schedule import NoiseSchedule, sampling_sigmas
from .sampling.solvers import get_solver
from .settings import NOISE_SOURCES, OFFICIAL, GenerationSettings

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, torch.Tensor], None]
Prompt = str | EncodedPrompt | torch.Tensor


def initial_noise(
    shape: tuple[int, ...], seed: int, device: torch.device, source: str
) -> tuple[torch.Tensor, torch.Generator]:
    """Unit Gaussian latent noise and the generator it came from (see the module docstring)."""
    if source == "cpu":
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=generator).to(device), generator
    if source == "device":
        generator = torch.Generator(device).manual_seed(seed)
        return torch.empty(shape, device=device).normal_(generator=generator), generator
    raise InvalidInputError(f"unknown noise source {source!r}; choose one of {', '.join(NOISE_SOURCES)}.")


def official_levels(decoded: torch.Tensor) -> torch.Tensor:
    """The official 8-bit output of decoded images [B,3,H,W] in about [-1,1]: x*127.5 + 127.5,
    clipped to [0,255], truncated to uint8; as [B,H,W,3]."""
    return (decoded.permute(0, 2, 3, 1) * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)


@dataclass
class GenerationResult:
    images: torch.Tensor  # [B,H,W,3] float32: the official 8-bit levels / 255, on the output device
    latents: torch.Tensor  # [B,4,h,w] final latents (scaled by LATENT_SCALE), on the output device
    seed: int
    model_timesteps: list[int] = field(default_factory=list)

    def to_pil(self) -> list[Image.Image]:
        """The 8-bit images, exactly the official output's levels."""
        pixels = (self.images.cpu() * 255).round().to(torch.uint8).numpy()
        return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


class FlashFacePipeline:
    """The loaded networks, the devices they run on, and `generate`.

    `device` is where the UNet computes; the VAE, text encoder and detector compute on their own
    device when one is given, else on `device`. `text_encoder` is only needed for prompts given
    as text, `detector` only by `crop_reference_faces`.
    """

    def __init__(
        self,
        unet,
        vae,
        text_encoder=None,
        detector=None,
        *,
        device: torch.device | str,
        vae_device: torch.device | str | None = None,
        text_encoder_device: torch.device | str | None = None,
        detector_device: torch.device | str | None = None,
        schedule: NoiseSchedule | None = None,
    ):
        self.unet, self.vae, self.text_encoder, self.detector = unet, vae, text_encoder, detector
        self.device = torch.device(device)
        self.vae_device = torch.device(vae_device or device)
        self.text_encoder_device = torch.device(text_encoder_device or device)
        self.detector_device = torch.device(detector_device or device)
        self.schedule = schedule or NoiseSchedule()
        self.codec = VAECodec(vae, self.vae_device)

    def crop_reference_faces(
        self,
        photos: Sequence[Image.Image],
        threshold: float = DEFAULT_DETECTION_THRESHOLD,
        several_faces: str = "largest",
    ) -> list[Image.Image]:
        """The official face crops of the photos (see `face.find_reference_faces`)."""
        if self.detector is None:
            raise InvalidInputError("No face detector is loaded; load one or pass face crops directly.")
        found = find_reference_faces(self.detector, list(photos), threshold, self.detector_device, several_faces)
        return [crop for photo in found for crop in photo.crops]

    def encode_prompts(
        self, prompt: Prompt, negative_prompt: Prompt, batch: int, prompt_postfixes: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch,77,C] each, on the CPU. A prompt is text, an `EncodedPrompt` (ComfyUI encodes in a
        node of its own, so no text encoder is needed while sampling), or embeddings [1,77,C] used
        as they are (then `prompt_postfixes` must be off: the words cannot be added to them)."""
        sides = (("positive", prompt), ("negative", negative_prompt))
        texts = [prompt_text(p, side, prompt_postfixes) for side, p in sides if isinstance(p, str)]
        encoded: Iterator[torch.Tensor] = iter(())
        if texts:
            if self.text_encoder is None:
                raise InvalidInputError("No text encoder is loaded; load one or pass encoded prompts.")
            with torch.no_grad():
                encoded = iter(encode_texts(self.text_encoder, texts, self.text_encoder_device).float().cpu())
        embeddings = []
        for side, value in sides:
            if isinstance(value, str):
                value = next(encoded)[None]
            elif isinstance(value, EncodedPrompt):
                value = value.embeddings(side, prompt_postfixes)
            elif isinstance(value, torch.Tensor):
                if prompt_postfixes:
                    raise InvalidInputError(
                        f"The {side} prompt is given as embeddings, so the official prompt words cannot be added "
                        "to it: give it as text or as an EncodedPrompt, or turn prompt_postfixes off."
                    )
            else:
                raise InvalidInputError(
                    f"The {side} prompt must be text or an encoded prompt, not {type(value).__name__}."
                )
            if value.dim() != 3 or value.shape[0] != 1:
                raise InvalidInputError(
                    f"The encoded {side} prompt must have shape [1, tokens, width], got {list(value.shape)}."
                )
            embeddings.append(value.float().cpu().expand(batch, -1, -1))
        return embeddings[0], embeddings[1]

    @torch.no_grad()
    def generate(
        self,
        reference_faces: Sequence[Image.Image] | torch.Tensor | Sequence[Person],
        prompt: Prompt,
        negative_prompt: Prompt = "",
        settings: GenerationSettings = OFFICIAL,
        *,
        face_mask: torch.Tensor | None = None,
        output_device: torch.device | str = "cpu",
        progress: Progress | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """Generate `settings.batch_size` images of the reference person (see `GenerationSettings`;
        its defaults are the official demo's).

        `reference_faces`: one person's face crops (or prepared tensors, see `VAECodec.encode_faces`),
        placed at the settings' face box, or at `face_mask` (a [H',W'] mask in [0,1]) when one is
        given; or several `Person`s, each with their own faces and place (experimental, see
        `flashface.people`; one `Person` is exactly the same as their faces and place given directly).
        Prompts: see `encode_prompts`.
        `progress(step, total, x0)` is called after every solver step, `should_cancel()` before
        each (raising GenerationCancelled). The result is on `output_device`.
        """
        if not isinstance(settings, GenerationSettings):
            raise InvalidInputError(f"settings must be a GenerationSettings, not {type(settings).__name__}.")
        people = as_people(reference_faces, settings.face_box, face_mask)
        h, w = latent_size(settings.width, settings.height)
        device, batch = self.device, settings.batch_size

        layout = PeopleLayout.of(people, settings.seed if settings.pad_references else None)
        reference_latents = self.codec.encode_people(people).to(device)

        positive, negative = self.encode_prompts(prompt, negative_prompt, batch, settings.prompt_postfixes)
        denoiser = ReferenceGuidedDenoiser(
            self.unet,
            self.schedule,
            positive.to(device),
            negative.to(device),
            reference_latents,
            settings=settings,
            people=layout,
        )
        denoiser.guidance.place(h, w)  # the people's places checked before the first step
        sigmas = sampling_sigmas(self.schedule, settings.steps, settings.discretization, settings.sigma_spacing)
        run_solver = get_solver(settings.solver)
        x, generator = initial_noise((batch, 4, h, w), settings.seed, device, settings.noise)
        logger.info(
            "sampling %d step(s) with %s, %d person(s), %d reference(s), %dx%d, seed %d on %s",
            len(sigmas) - 1,
            settings.solver,
            layout.count,
            len(reference_latents),
            settings.width,
            settings.height,
            settings.seed,
            device,
        )
        latents = run_solver(denoiser, x, sigmas, callback=progress, should_cancel=should_cancel, generator=generator)

        images = official_levels(self.codec.decode(latents, should_cancel)).to(output_device).float() / 255
        return GenerationResult(
            images=images,
            latents=latents.float().to(output_device),
            seed=settings.seed,
            model_timesteps=denoiser.model_timesteps,
        )
