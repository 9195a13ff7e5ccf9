"""Checks of what arrives on a node's links: a link can carry anything (a Switch or Any node passes
any type through), and a wrong value must stop with a message, not an AttributeError."""

from __future__ import annotations

import torch

from ..flashface.errors import InvalidInputError


def what_was_given(value) -> str:
    """How a wrong value on a node input is named in its message: "text", "a tensor of shape [...]"..."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list (a ComfyUI CONDITIONING is one)" if value and isinstance(value[0], list) else "a list"
    return f"a {type(value).__name__}"


def expect(value, kind: type, input_name: str, source: str):
    """`value` if it is a `kind`, else an error naming the input and what to connect to it."""
    if not isinstance(value, kind):
        raise InvalidInputError(f"The {input_name} input got {what_was_given(value)}; connect {source} to it.")
    return value


def expect_image(value, input_name: str) -> torch.Tensor:
    """A ComfyUI IMAGE: a finite [B,H,W,C] (or [H,W,C]) tensor with 1, 3 or 4 channels."""
    expect(value, torch.Tensor, input_name, "an IMAGE (e.g. from Load Image)")
    if value.dim() not in (3, 4) or value.shape[-1] not in (1, 3, 4) or 0 in value.shape:
        raise InvalidInputError(
            f"The {input_name} input got {what_was_given(value)}; an IMAGE is [batch, height, width, "
            "channels] with 1, 3 or 4 channels. Connect an IMAGE (e.g. from Load Image)."
        )
    if not torch.isfinite(value).all():
        raise InvalidInputError(
            f"The {input_name} input has pixel values that are not numbers (NaN or infinite); "
            "check the nodes that made it."
        )
    return value


def expect_mask(value, input_name: str) -> torch.Tensor:
    """A ComfyUI MASK holding one mask: [H,W], or [B,H,W] whose masks are all the same (a batch of
    different masks is refused: a person has one place); not empty, finite."""
    expect(value, torch.Tensor, input_name, "a MASK (e.g. from Load Image or Solid Mask)")
    if value.dim() not in (2, 3) or 0 in value.shape:
        raise InvalidInputError(
            f"The {input_name} input got {what_was_given(value)}; a MASK is [height, width] or "
            "[batch, height, width] with at least one mask (a mask filter may have let none "
            "through)."
        )
    mask = value[0] if value.dim() == 3 else value
    if value.dim() == 3 and value.shape[0] > 1 and not all(torch.equal(mask, other) for other in value[1:]):
        raise InvalidInputError(
            f"The {input_name} input got a batch of {value.shape[0]} different masks; it takes one mask (one "
            "person's place). Give one mask; to fix several pictures, give them as a batch to the face fix's Detect "
            "Face, which hands on each picture with its own mask."
        )
    if not torch.isfinite(mask).all():
        raise InvalidInputError(
            f"The {input_name} input has values that are not numbers (NaN or infinite); check the nodes that made it."
        )
    return mask


def check_text_embedding(embedding: torch.Tensor, width: int, where: str, values: bool = True) -> None:
    """A prompt's embedding [.., tokens, C] must be as wide as the loaded text encoder's output (the
    UNet's context width: SDXL's or another model's conditioning is not) and, with `values`,
    finite."""
    if embedding.shape[-1] != width:
        raise InvalidInputError(
            f"The {where} is {embedding.shape[-1]} wide, but the FlashFace UNet reads prompts {width} wide (SD1.5's "
            "CLIP-L). It comes from another model's text encoder (SDXL's is 2048): encode the prompt with FlashFace "
            "CLIP Text Encode."
        )
    if values and not torch.isfinite(embedding).all():
        raise InvalidInputError(
            f"The {where} has values that are not numbers (NaN or infinite); check the nodes "
            "that made it (encode the prompt with FlashFace CLIP Text Encode)."
        )


def expect_conditioning(value, input_name: str, width: int) -> torch.Tensor:
    """The text embedding [1,77,C] of a ComfyUI CONDITIONING (its first entry), finite and `width` wide."""
    if not (
        isinstance(value, list)
        and value
        and isinstance(value[0], (list, tuple))
        and len(value[0]) == 2
        and isinstance(value[0][0], torch.Tensor)
        and value[0][0].dim() == 3
        and value[0][0].shape[0] > 0
    ):
        raise InvalidInputError(
            f"The {input_name} input got {what_was_given(value)}; connect a CONDITIONING output of "
            "FlashFace CLIP Text Encode to it."
        )
    embedding = value[0][0][:1]
    check_text_embedding(embedding, width, f"{input_name} conditioning")
    return embedding


def expect_latent(value, input_name: str) -> torch.Tensor:
    """The samples [B,4,h,w] of a ComfyUI LATENT: at least one, finite."""
    samples = value.get("samples") if isinstance(value, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or samples.shape[1] != 4 or 0 in samples.shape:
        raise InvalidInputError(
            f"The {input_name} input got {what_was_given(samples if samples is not None else value)}; "
            "connect an SD1.5 LATENT (4 channels, at least one latent, e.g. from KSampler) to it."
        )
    if not torch.isfinite(samples).all():
        raise InvalidInputError(
            f"The {input_name} latent has values that are not numbers (NaN or infinite); check "
            "the sampler or node that made it."
        )
    return samples
