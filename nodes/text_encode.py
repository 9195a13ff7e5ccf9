"""FlashFace CLIP Text Encode: prompt text -> FLASHFACE_CONDITIONING (CLIP ViT-L/14 last layer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flashface.pipeline import DEFAULT_NEGATIVE_POSTFIX, DEFAULT_POSITIVE_POSTFIX, with_official_postfixes
from .load_model import FLASHFACE_MODEL

FLASHFACE_CONDITIONING = "FLASHFACE_CONDITIONING"
POSTFIXES = ("positive", "negative", "none")


@dataclass(eq=False)
class FlashFaceConditioning:
    """What flows on a FLASHFACE_CONDITIONING link: the encoded prompt and the text it came from."""

    embeddings: torch.Tensor  # [1, 77, C] float32 on the CPU
    text: str


def with_postfix(text: str, postfix: str) -> str:
    """The prompt as the official demo builds it for that side (see `with_official_postfixes`)."""
    if postfix == "positive":
        return with_official_postfixes(text, "")[0]
    if postfix == "negative":
        return with_official_postfixes("", text)[1]
    return text


class FlashFaceCLIPTextEncode:
    DESCRIPTION = ("Encodes a prompt with FlashFace's CLIP text encoder (the final layer, as FlashFace was "
                   "trained). Use one for the positive and one for the negative prompt. ComfyUI's "
                   "(word:1.2) weighting syntax is not interpreted: the text is used as written.")
    CATEGORY = "FlashFace"
    RETURN_TYPES = (FLASHFACE_CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The encoded prompt, for the Generator's positive or negative input.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flashface_model": (FLASHFACE_MODEL, {"tooltip": "From FlashFace Load Model (uses its CLIP text encoder)."}),
            "text": ("STRING", {
                "multiline": True, "dynamicPrompts": True,
                "tooltip": "The prompt. Describe the scene and the person's look; the identity comes from the "
                           "reference faces. Longer prompts are cut after 75 tokens."}),
            "quality_postfix": (list(POSTFIXES), {
                "default": "positive",
                "tooltip": f"Append the official quality text, joined with ', ' as the official demo does. "
                           f"positive: '{DEFAULT_POSITIVE_POSTFIX}'. negative: the official negative list "
                           f"('{DEFAULT_NEGATIVE_POSTFIX[:40]}...'; used alone when the text is empty). "
                           f"none: the text as it is."}),
        }}

    def encode(self, flashface_model, text, quality_postfix):
        prompt = with_postfix(text, quality_postfix)
        (text_encoder,) = flashface_model.ready("text_encoder")
        with torch.no_grad():
            embeddings = text_encoder.encode([prompt]).float().cpu()
        return (FlashFaceConditioning(embeddings, prompt),)
