"""The bundled workflows as API-format prompts, and small edits the ComfyUI tests make to them."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from comfy_installs import REPO_ROOT
from tiny_flashface_models import use_tiny_models

API_DIR = REPO_ROOT / "workflows" / "api"
API_WORKFLOWS = sorted(API_DIR.glob("*.json"))  # every bundled workflow's API copy
SMALLEST_WORKFLOW = "flashface_one_photo"
PHOTO = "flashface_astronaut.jpg"
# what the comfyui_tiny fixture (conftest.py) adds to the server's folders
BLANK_PHOTO = "flashface_test_blank.png"
SECOND_DETECTOR = "tiny_retinaface_copy.pth"
CORRUPT_MODEL = "corrupt_unet.safetensors"
TEXT_AS_MODEL = "notes_saved_as_model.pth"  # a text file under a model's suffix


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


def run_to_levels(server, prompt, timeout: float = 600) -> torch.Tensor:
    """Run `prompt` (it must succeed); the 8-bit images its SaveImage node wrote, [B,H,W,3] as int32
    so that two can be subtracted."""
    run = server.run(prompt, timeout=timeout)
    assert run.status == "success", run.error_text() or server.log_tail()
    return saved_levels(server, run, node_id(prompt, "SaveImage")).int()


def level_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    """How far two images of `run_to_levels` are apart, in words."""
    difference = (a - b).abs()
    return f"max {int(difference.max())}, mean {float(difference.float().mean()):.3f} levels"


def api_workflow(name: str) -> dict:
    """A bundled workflow with its Load Model pointed at the tiny models."""
    return use_tiny_models(load_api_workflow(name))


def quick_prompt(seed: int = 0, **generator) -> dict:
    """The smallest workflow at 64x64 with 2 steps, for error and memory tests."""
    prompt = api_workflow(SMALLEST_WORKFLOW)
    return set_inputs(
        prompt, "FlashFace_Generator", **{"steps": 2, "width": 64, "height": 64, "seed": seed, **generator}
    )


def with_model_node(prompt: dict, class_type: str, **inputs) -> dict:
    """`prompt` with a node of `class_type` (taking `model`, and `inputs`) between the KSampler and
    the MODEL it had."""
    sampler = prompt[node_id(prompt, "KSampler")]["inputs"]
    prompt["60"] = {"class_type": class_type, "inputs": {"model": sampler["model"], **inputs}}
    sampler["model"] = ["60", 0]
    return prompt


def cheap_model_workflow(name: str, size: int = 64, steps: int = 4, **ksampler) -> dict:
    """A bundled MODEL workflow (FlashFace Apply + KSampler) on the tiny models at size x size px
    with `steps` steps: an empty latent of that size, or the start picture scaled to it."""
    prompt = api_workflow(name)
    if "EmptyLatentImage" in {node["class_type"] for node in prompt.values()}:
        set_inputs(prompt, "EmptyLatentImage", width=size, height=size)
    else:  # the start picture scaled, for every node that takes it (a face fix finds its face in it first)
        picture = list(prompt[node_id(prompt, "FlashFace_VAEEncode")]["inputs"]["pixels"])
        if prompt[picture[0]]["class_type"] == "FlashFace_DetectFace":
            picture = list(prompt[picture[0]]["inputs"]["images"])
        for node in prompt.values():
            node["inputs"].update({name: ["90", 0] for name, value in node["inputs"].items() if value == picture})
        prompt["90"] = {
            "class_type": "ImageScale",
            "inputs": {"image": picture, "upscale_method": "bilinear", "width": size, "height": size, "crop": "center"},
        }
    return set_inputs(prompt, "KSampler", **{"steps": steps, **ksampler})


def assert_server_healthy(server) -> None:
    assert server.alive(), server.log_tail()
    assert server.get("/system_stats")["system"]["comfyui_version"]


def expect_node_error(server, prompt, node_type, *phrases):
    """Run `prompt`; it must stop in a node of `node_type` with every phrase in the message, and
    leave the server up."""
    run = server.run(prompt)
    assert run.status == "error", f"expected an error, got {run.status}"
    assert run.error["node_type"] == node_type, run.error_text()
    message = run.error["exception_message"]
    for phrase in phrases:
        assert phrase in message, message
    assert_server_healthy(server)
    return run


# Every node of the pack: its inputs (required and optional) and its output types.
NODE_INPUTS = {
    "FlashFace_LoadModel": {"unet_name", "vae_name", "clip_name", "detector_name", "weight_dtype", "vae_attention"},
    "FlashFace_DetectFace": {
        "flashface_model",
        "images",
        "threshold",
        "several_faces",
        "images_2",
        "images_3",
        "images_4",
    },
    "FlashFace_CLIPTextEncode": {"flashface_model", "text"},
    "FlashFace_Apply": {
        "flashface_model",
        "reference_faces",
        "negative",
        "reference_feature_strength",
        "reference_feature_strength_before_launch",
        "reference_guidance_strength",
        "launch_timestep",
        "face_x1",
        "face_y1",
        "face_x2",
        "face_y2",
        "pad_references",
        "padding_seed",
        "face_mask",
        "people",
    },
    "FlashFace_Sigmas": {"steps", "discretization", "sigma_spacing"},
    "FlashFace_VAEEncode": {"flashface_model", "pixels"},
    "FlashFace_VAEDecode": {"flashface_model", "samples"},
    "FlashFace_Generator": {
        "flashface_model",
        "positive",
        "negative",
        "reference_faces",
        "seed",
        "steps",
        "solver",
        "discretization",
        "sigma_spacing",
        "text_guidance",
        "reference_feature_strength",
        "reference_guidance_strength",
        "launch_timestep",
        "face_x1",
        "face_y1",
        "face_x2",
        "face_y2",
        "width",
        "height",
        "batch_size",
        "preset",
        "face_mask",
        "prompt_postfixes",
        "reference_feature_strength_before_launch",
        "pad_references",
        "people",
    },
    "FlashFace_Person": {"reference_faces", "face_x1", "face_y1", "face_x2", "face_y2", "face_mask", "people"},
    "FlashFace_GraftCheckpoint": {"flashface_model", "checkpoint", "base_checkpoint", "strength"},
}


NODE_OUTPUTS = {
    "FlashFace_LoadModel": ["FLASHFACE_MODEL"],
    "FlashFace_DetectFace": ["IMAGE", "IMAGE", "INT", "MASK", "IMAGE"],
    "FlashFace_CLIPTextEncode": ["FLASHFACE_CONDITIONING", "CONDITIONING", "CONDITIONING", "CONDITIONING"],
    "FlashFace_Apply": ["MODEL"],
    "FlashFace_Sigmas": ["SIGMAS"],
    "FlashFace_VAEEncode": ["LATENT"],
    "FlashFace_VAEDecode": ["IMAGE"],
    "FlashFace_Generator": ["IMAGE", "LATENT"],
    "FlashFace_Person": ["FLASHFACE_PEOPLE"],
    "FlashFace_GraftCheckpoint": ["FLASHFACE_MODEL"],
}
