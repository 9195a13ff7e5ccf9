"""Images <-> latents with a loaded VAE on its device: `VAECodec`, what the Generator, the VAE nodes
and FlashFace Apply encode and decode with.

One image at a time: encoding gives the posterior mean, scaled by LATENT_SCALE (as FlashFace
encodes); decoding falls back to tiles when a whole image does not fit in memory
(`AutoencoderKL.decode_tiled`); `should_cancel()` is asked before each image (and, decoding,
between the decoder's blocks and its tiles); a latent that decodes to values that are not numbers
is refused. Reference faces (crops, or prepared [N,3,224,224] tensors) encode to reference latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..errors import CancelCheck, InvalidInputError, stop_if_cancelled
from ..face import prepare_reference
from ..utils.memory import first_that_fits
from .vae import LATENT_SCALE


class VAECodec:
    def __init__(self, vae, device: torch.device | str):
        self.vae, self.device = vae, torch.device(device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, should_cancel: CancelCheck | None = None) -> torch.Tensor:
        """Latents [B,4,H/8,W/8] (posterior mean, scaled), on the VAE's device, of images [B,3,H,W]
        in [-1, 1]."""
        latents = []
        for number, image in enumerate(images.to(self.device), 1):
            stop_if_cancelled(should_cancel, f"Encoding cancelled before image {number} of {len(images)}.")
            latents.append(self.vae.encode(image[None]))
        return torch.cat(latents).float() * LATENT_SCALE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, should_cancel: CancelCheck | None = None) -> torch.Tensor:
        """Images [B,3,H,W] in about [-1,1] from scaled latents, on the VAE's device."""
        images = []
        for number, z in enumerate((latents / LATENT_SCALE).to(self.device), 1):
            stop_if_cancelled(should_cancel, f"Decoding cancelled before image {number} of {len(latents)}.")
            image = first_that_fits(
                [
                    ("as a whole", lambda z=z: self.vae.decode(z[None], should_cancel).float()),
                    ("in tiles", lambda z=z: self.vae.decode_tiled(z[None], should_cancel=should_cancel)),
                ],
                self.device,
            )
            if image.device.type != "meta" and not torch.isfinite(image).all():  # meta tensors hold no values
                raise InvalidInputError(
                    f"Latent {number} of {len(latents)} decodes to values that are not numbers: it holds NaN or "
                    f"infinite values, or values far outside an SD1.5 latent's (largest magnitude "
                    f"{float(z.abs().nan_to_num(float('inf')).max()):.3g}). Check the sampler or node that made it."
                )
            images.append(image)
        return torch.cat(images)

    def encode_faces(self, faces: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Reference latents [N,4,28,28] (scaled), on the VAE's device, from face crops or prepared
        tensors [N,3,224,224] in [-1, 1]."""
        if isinstance(faces, torch.Tensor):
            images = faces
        else:
            images = torch.stack([prepare_reference(face) for face in faces]) if len(faces) else torch.empty(0)
        if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] != 3:
            raise InvalidInputError("Give at least one reference face (a face crop, or a [N,3,224,224] tensor).")
        return self.encode(images)

    def encode_people(self, people: Sequence) -> torch.Tensor:
        """The reference latents of every person (`flashface.people.Person`), person after person."""
        return torch.cat([self.encode_faces(person.faces) for person in people])
