"""Small seeded CLIP text towers in the published key formats.

``naming="official"``: the whole-CLIP layout of ``openai-clip-vit-large-14.pth`` (``textual.*``
including the unused projection ``textual.head``, a few ``visual.*`` tensors and ``log_scale``).
``naming="hf"``: the same weights in Hugging Face ``clip_l.safetensors`` naming (with
``position_ids``, ``text_projection.weight`` and ``logit_scale``). The vocabulary is the real
one (49408), so real token ids work; a small width keeps the file small. ``.safetensors`` files
carry the head count as metadata "num_heads"; other suffixes are written with torch.save.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flashface.models.clip_text import CLIPTextEncoder, TextEncoderConfig, hf_plan
from seeded_weights import save_state_dict, seeded_state_dict

VISION_WIDTH = 8  # the vision tower is never loaded; a token of it is enough


def tiny_clip_text_config(width=32, layers=2, heads=2) -> TextEncoderConfig:
    return TextEncoderConfig(width=width, layers=layers, num_heads=heads, mlp_width=4 * width)


def tiny_text_tower(seed=0, **sizes) -> dict[str, torch.Tensor]:
    """Seeded text-tower weights (fan-in scaled) in the module's (= official minus prefix) naming."""
    with torch.device("meta"):
        shapes = {k: t.shape for k, t in CLIPTextEncoder(tiny_clip_text_config(**sizes)).state_dict().items()}
    return seeded_state_dict(
        dict(sorted(shapes.items())),
        seed,
        unit_scale=lambda key: key.endswith("embedding") or key.endswith("embedding.weight"),
    )


def official_clip_state_dict(seed=0, width=32, layers=2, heads=2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    state = {"textual." + k: v for k, v in tiny_text_tower(seed, width=width, layers=layers, heads=heads).items()}
    state["textual.head"] = torch.randn(width, width, generator=generator) * width**-0.5
    state["visual.cls_embedding"] = torch.randn(1, 1, VISION_WIDTH, generator=generator)
    state["visual.head"] = torch.randn(VISION_WIDTH, width, generator=generator)
    state["log_scale"] = torch.tensor(4.6052)
    return state


def hf_clip_state_dict(seed=0, width=32, layers=2, heads=2, prefix="") -> dict[str, torch.Tensor]:
    """The same text-tower weights as `official_clip_state_dict(seed, ...)` in HF naming."""
    sizes = dict(width=width, layers=layers, heads=heads)
    tower = tiny_text_tower(seed, **sizes)
    state = {}
    for module_key, plan in hf_plan(tiny_clip_text_config(**sizes), prefix).items():
        if module_key == "pos_embedding":  # HF stores the table without the batch dimension
            parts = [tower[module_key][0]]
        else:  # q, k, v stored separately
            parts = tower[module_key].chunk(len(plan.file_keys))
        for file_key, part in zip(plan.file_keys, parts):
            state[file_key] = part.clone()
    context_length = tower["pos_embedding"].shape[1]
    state[prefix + "text_model.embeddings.position_ids"] = torch.arange(context_length)[None]
    projection = torch.randn(width, width, generator=torch.Generator().manual_seed(seed + 1))
    state[prefix + "text_projection.weight"] = projection
    state[prefix + "logit_scale"] = torch.tensor(4.6052)
    return state


def write_tiny_clip_text(path, seed=0, width=32, layers=2, heads=2, naming="official") -> Path:
    """Write a tiny CLIP as .safetensors (num_heads metadata) or a torch.save pickle."""
    path = Path(path)
    writers = {"official": official_clip_state_dict, "hf": hf_clip_state_dict}
    state = writers[naming](seed, width=width, layers=layers, heads=heads)
    return save_state_dict(state, path, {"num_heads": str(heads)})
