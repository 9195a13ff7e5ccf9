"""FlashFace CLIP Text Encode: prompt text -> FLASHFACE_CONDITIONING for the Generator, and the same
embeddings as ComfyUI CONDITIONING for KSampler (CLIP ViT-L/14 last layer)."""

from __future__ import annotations

from ..flashface.prompts import encode_prompt
from .declare import FlashFaceNode, outputs
from .inputs import expect
from .load_model import expect_model, model_input

FLASHFACE_CONDITIONING = "FLASHFACE_CONDITIONING"
"""Carries a `flashface.prompts.EncodedPrompt`: the text encoded as written and with the official
words of each side; the Generator takes the variant of the input it is connected to."""


class FlashFaceCLIPTextEncode(FlashFaceNode):
    """Encodes a prompt with FlashFace's CLIP text encoder (the final layer, as FlashFace was trained).
    Use one for the positive and one for the negative prompt: the Generator adds the official
    quality words to the positive and the official negative list to the negative (its
    prompt_postfixes input). ComfyUI's (word:1.2) weighting syntax is not interpreted: the text is
    used as written.
    """

    SEARCH_ALIASES = ["prompt", "text encode", "clip", "face id", "identity"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("conditioning", FLASHFACE_CONDITIONING, "The encoded prompt, for the Generator's positive or negative input."),
        (
            "positive",
            "CONDITIONING",
            "For KSampler's positive (FlashFace Apply): the prompt with the official quality "
            "words, as the Generator uses it.",
        ),
        (
            "negative",
            "CONDITIONING",
            "For KSampler's negative and FlashFace Apply's negative: the prompt with the "
            "official negative list, as the Generator uses it.",
        ),
        ("as_written", "CONDITIONING", "The prompt as written, without the official words (either side)."),
    )
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input("CLIP text encoder"),
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The prompt. Describe the scene and the person's look; the identity comes from the "
                        "reference faces. Longer prompts are cut after 75 tokens.",
                    },
                ),
            }
        }

    def encode(self, flashface_model, text):
        expect_model(flashface_model)
        expect(text, str, "text", "a text (STRING)")
        (text_encoder,) = flashface_model.ready("text_encoder")
        encoded = encode_prompt(text_encoder, text, flashface_model.device("text_encoder"))
        return (
            encoded,
            *([[embedding.cpu(), {}]] for embedding in (encoded.as_positive, encoded.as_negative, encoded.as_written)),
        )
