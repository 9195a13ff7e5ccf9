"""A test-only node pack that patches a MODEL's attention the way IPAdapter does: an attn2
replacement on every block, attending to the prompt and, with a weight, to "image tokens" of its
own (seeded tokens for positive rows, zeros for negative rows, read off ComfyUI's cond_or_uncond).
It checks what it is handed as a patch written for SD1.5 would assume: one row of q per row of
the latent batch, and a row kind per chunk of rows."""

import torch
from comfy.ldm.modules.attention import optimized_attention


class TestImageTokens:
    CATEGORY = "testing"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "weight": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "identity": ("BOOLEAN", {"default": False}),
            }
        }

    def patch(self, model, weight, identity):
        patched = model.clone()

        def replace(q, k, v, extra):
            heads = extra["n_heads"]
            rows, kinds = extra["original_shape"][0], extra["cond_or_uncond"]
            if q.shape[0] != rows or rows % len(kinds) or not set(kinds) <= {0, 1}:
                raise RuntimeError(f"an SD1.5 patch cannot use q {tuple(q.shape)} for rows {rows} of kinds {kinds}")
            out = optimized_attention(q, k, v, heads)
            if identity:
                return out
            width = q.shape[-1]
            tokens = torch.randn(1, 4, width, generator=torch.Generator().manual_seed(width)).to(q)
            per_kind = rows // len(kinds)
            image = torch.cat([tokens.expand(per_kind, -1, -1) * (kind == 0) for kind in kinds])
            return out + weight * optimized_attention(q, image, image, heads)

        for block in [("input", index) for index in range(12)] + [("middle", 0)] + [("output", i) for i in range(12)]:
            patched.set_model_attn2_replace(replace, *block)
        return (patched,)


NODE_CLASS_MAPPINGS = {"TestImageTokens": TestImageTokens}
