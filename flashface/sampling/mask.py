"""The face-position mask: the UNet's fifth input channel, one value per latent cell.

From a normalized box (x1, y1, x2, y2) the official code draws a *square* of side
max(X2 − X1, Y2 − Y1) pixels anchored at the box's top-left corner (coordinates truncated to
whole pixels, clipped at the image border) and keeps every 8th pixel: latent cell (i, j) is 1
iff pixel (8i, 8j) lies in the square. An all-zero box gives an all-zero mask, i.e. no position
hint; any other box, and any user mask, must mark at least one latent cell (else it is refused:
a silently empty mask would drop the position hint). Output sizes must be multiples of 8, so the
mask and the latent have the same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

LATENT_FACTOR = 8


def _nearest_multiples(value: int) -> str:
    lower = value // LATENT_FACTOR * LATENT_FACTOR
    return " or ".join(str(v) for v in (lower, lower + LATENT_FACTOR) if v > 0)


def latent_size(width: int, height: int) -> tuple[int, int]:
    """(h, w) of the latent for an output of width×height pixels; both must be multiples of 8."""
    for name, value in (("width", width), ("height", height)):
        if value < LATENT_FACTOR or value % LATENT_FACTOR:
            raise InvalidInputError(
                f"The image {name} must be a positive multiple of {LATENT_FACTOR}, got {value}; "
                f"use {_nearest_multiples(value) if value >= LATENT_FACTOR else LATENT_FACTOR}."
            )
    return height // LATENT_FACTOR, width // LATENT_FACTOR


def check_face_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """The box as four floats, or an error saying what a face box is."""
    if len(box) != 4 or not all(0 <= float(v) <= 1 for v in box):
        raise InvalidInputError(f"The face box must be four numbers x1, y1, x2, y2 between 0 and 1, got {list(box)}.")
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def face_square(box: Sequence[float], width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) in pixels of the official face square of a normalized box (see the module
    docstring)."""
    check_face_box(box)
    left, top, right, bottom = (int(float(v) * size) for v, size in zip(box, (width, height, width, height)))
    if right < left or bottom < top:
        raise InvalidInputError(f"The face box {list(box)} has x2 < x1 or y2 < y1; give the top-left corner first.")
    return left, top, max(right - left, bottom - top)


def box_mask(box: Sequence[float], width: int, height: int) -> torch.Tensor:
    """Latent mask [h, w] (float32, 0/1) of the official face square for a normalized box."""
    h, w = latent_size(width, height)
    left, top, side = face_square(box, width, height)
    rows = torch.arange(h) * LATENT_FACTOR
    columns = torch.arange(w) * LATENT_FACTOR
    inside_rows = (rows >= top) & (rows < top + side)
    inside_columns = (columns >= left) & (columns < left + side)
    mask = (inside_rows[:, None] & inside_columns[None, :]).float()
    if not mask.any() and any(float(v) for v in box):
        raise InvalidInputError(
            f"The face box {list(box)} covers no part of a {width}x{height} image (it has no size, or its square "
            "starts outside the image). Give a box around where the face should be, or set all four values to 0 "
            "for no position hint."
        )
    return mask


def resize_mask(mask: torch.Tensor, width: int, height: int, threshold: float = 0.5) -> torch.Tensor:
    """Latent mask [h, w] from a user mask [H', W'] (or [1, H', W']) with values in [0, 1].

    The mask is sampled with nearest neighbour at the latent cells' top-left pixels, which for a
    mask of the output size is exactly the official stride-8 subsampling, then binarized at
    `threshold` (the network was trained with 0/1 masks). A mask up to 7 pixels larger than the
    output on a side was made at the size of a picture whose sides are not multiples of 8: it loses
    its last rows or columns, as that picture does when it is encoded (FlashFace VAE Encode), so it
    stays on the same pixels instead of being stretched.
    """
    h, w = latent_size(width, height)
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2 or mask.numel() == 0:
        raise InvalidInputError(f"The face mask must be one [height, width] mask, got shape {tuple(mask.shape)}.")
    if not torch.isfinite(mask).all():
        raise InvalidInputError(
            "The face mask has values that are not numbers (NaN or infinite); give a mask with "
            "values between 0 and 1 (white = face)."
        )
    if all(0 <= side - cells * LATENT_FACTOR < LATENT_FACTOR for side, cells in zip(mask.shape, (h, w))):
        mask = mask[: h * LATENT_FACTOR, : w * LATENT_FACTOR]
    sampled = (F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0] >= threshold).float()
    if not sampled.any():
        raise InvalidInputError(
            f"The face mask marks no face area at the {width}x{height} output (it is black, or its white part is "
            "smaller than 8 pixels). Paint where the face should be in white, or disconnect the mask and set the "
            "face box to all zeros for no position hint."
        )
    return sampled
