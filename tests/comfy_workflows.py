"""The bundled workflows as API-format prompts, and small edits the ComfyUI tests make to them."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from comfy_server import REPO_ROOT

API_DIR = REPO_ROOT / "workflows" / "api"


def load_api_workflow(name: str) -> dict:
    """The API-format copy of a bundled workflow, as shipped."""
    return json.loads((API_DIR / f"{name}.json").read_text())


def node_ids(prompt: dict, class_type: str) -> list[str]:
    return [key for key, node in prompt.items() if node["class_type"] == class_type]


def node_id(prompt: dict, class_type: str) -> str:
    (found,) = node_ids(prompt, class_type)
    return found


def node_titled(prompt: dict, title: str) -> str:
    (found,) = [key for key, node in prompt.items() if node.get("_meta", {}).get("title") == title]
    return found


def set_inputs(prompt: dict, class_type: str, **values) -> dict:
    prompt[node_id(prompt, class_type)]["inputs"].update(values)
    return prompt


def saved_levels(server, run, node: str) -> torch.Tensor:
    """The 8-bit images an output node (SaveImage, PreviewImage) wrote, [B,H,W,3] uint8."""
    pictures = [Image.open(io.BytesIO(server.view(image))).convert("RGB") for image in run.outputs[node]["images"]]
    return torch.from_numpy(np.stack([np.array(picture) for picture in pictures]))
