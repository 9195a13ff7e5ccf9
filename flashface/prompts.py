"""The official demo's prompt words, and prompts encoded for either side of the guidance.

The official demo never uses a prompt as typed: it appends its quality words to the positive
prompt and its negative list to the negative prompt (`official_positive`, `official_negative`).
Which words a prompt gets therefore depends on the side it is used on, not on the prompt, so an
`EncodedPrompt` holds the text encoded three ways (as written, as a positive, as a negative) and
the generator takes the variant of the side it is given to: no wiring can put the quality words
into the negative prompt (which is also the text context of the reference pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ContractError
from .models.clip_text import encode_texts

POSITIVE_POSTFIX = "best quality, masterpiece,ultra-detailed, UHD 4K, photographic"
NEGATIVE_POSTFIX = (
    "blurry, ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, out of frame, "
    "extra limbs, disfigured, deformed, body out of frame, bad anatomy, watermark, signature, cut off, "
    "low contrast, underexposed, overexposed, bad art, beginner, amateur, distorted face"
)
SIDES = ("positive", "negative")


def official_positive(text: str) -> str:
    """text + ", " + the quality words, as the demo does (also for an empty text)."""
    return f"{text}, {POSITIVE_POSTFIX}"


def official_negative(text: str) -> str:
    """text + ", " + the negative list, or the negative list alone when the text is empty."""
    return f"{text}, {NEGATIVE_POSTFIX}" if text else NEGATIVE_POSTFIX


def prompt_text(text: str, side: str, postfixes: bool) -> str:
    """The text the network reads for `text` used on `side`, with or without the official words."""
    if side not in SIDES:
        raise ContractError(f"A prompt side is one of {', '.join(SIDES)}, not {side!r}.")
    if not postfixes:
        return text
    return official_positive(text) if side == "positive" else official_negative(text)


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """A prompt's text and its embeddings [1, 77, C] (float32, CPU): as written, and with the
    official words of each side."""

    text: str
    as_written: torch.Tensor
    as_positive: torch.Tensor
    as_negative: torch.Tensor

    def embeddings(self, side: str, postfixes: bool) -> torch.Tensor:
        if not postfixes:
            return self.as_written
        return self.as_positive if side == "positive" else self.as_negative


def encode_prompt(text_encoder, text: str, device: torch.device | str) -> EncodedPrompt:
    """Encode `text` the three ways in one batch on `device`; the result is on the CPU."""
    texts = [text, official_positive(text), official_negative(text)]
    with torch.no_grad():
        encoded = encode_texts(text_encoder, texts, device).float().cpu()
    return EncodedPrompt(text, *(row[None] for row in encoded))
