"""Conversions between ComfyUI's IMAGE tensors and the PIL images the library works on.

ComfyUI IMAGE: float32 [B, H, W, 3] in 0..1, channels last. Images of different sizes travel as
a Python list of such batches. Pixel values are rounded (not truncated) to 8 bits, so an image
that came from LoadImage converts back to exactly the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from .inputs import expect_image


def image_batches_to_pil(batches: Iterable[torch.Tensor], input_name: str) -> list[Image.Image]:
    """Every image of a list of IMAGE batches (or single [H, W, C] images), in order, as RGB PIL;
    anything that is not an IMAGE stops with a message naming `input_name`."""
    images = []
    for batch in batches:
        batch = expect_image(batch, input_name)
        if batch.dim() == 3:
            batch = batch[None]
        for image in batch:
            pixels = (image[..., :3].float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
            if pixels.shape[-1] == 1:
                pixels = pixels.expand(*pixels.shape[:-1], 3)
            images.append(Image.fromarray(pixels.numpy(), "RGB"))
    return images


def pil_to_image(image: Image.Image) -> torch.Tensor:
    """One RGB PIL image -> IMAGE [1, H, W, 3]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


def pil_to_batch(images: list[Image.Image]) -> torch.Tensor:
    """Equal-size PIL images -> one IMAGE batch [N, H, W, 3]."""
    return torch.cat([pil_to_image(image) for image in images])
