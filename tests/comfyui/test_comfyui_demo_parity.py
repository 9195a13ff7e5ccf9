"""The third route to the official demo's image: every `demo_generate` fixture case through the
bundled workflow in a real ComfyUI server, with only the inputs the case names changed (model
files, photos, prompts, seed, steps, size, samples, face box, strengths, launch timestep,
detection threshold). The library and command-line routes are in tests/fast/test_demo_parity.py and
tests/slow/test_demo_parity_command_line.py."""

from __future__ import annotations

import pytest
import torch

from comfy_workflows import load_api_workflow, node_id, node_ids, node_titled, saved_levels, set_inputs
from demo_cases import DemoCase, case_pipeline, demo_cases, diagnose

DETECT_FACE_PHOTO_INPUTS = ("images", "images_2", "images_3", "images_4")
FACES_PREVIEW = "faces_for_diagnosis"


def case_prompt(demo: DemoCase, files: dict, photos: list[str]) -> dict:
    """The bundled workflow for the case's photo count, with the case's inputs; plus a preview of
    Detect Face's crops (an output only, so that a difference can be traced)."""
    config = demo.config
    prompt = load_api_workflow("flashface_one_photo" if len(photos) == 1 else "flashface_several_photos")
    set_inputs(prompt, "FlashFace_LoadModel", **{slot: path.name for slot, path in files.items()})
    detect = node_id(prompt, "FlashFace_DetectFace")
    prompt[detect]["inputs"]["threshold"] = config["min_thr"]
    loaders = [
        prompt[detect]["inputs"][name][0] for name in DETECT_FACE_PHOTO_INPUTS if name in prompt[detect]["inputs"]
    ]
    if len(loaders) < len(photos):
        pytest.skip(f"{demo.name} has {len(photos)} photos; the bundled workflow takes {len(loaders)}")
    for loader, name in zip(loaders, photos):
        prompt[loader]["inputs"]["image"] = name
    for unused, name in zip(loaders[len(photos) :], DETECT_FACE_PHOTO_INPUTS[len(photos) : len(loaders)]):
        del prompt[unused], prompt[detect]["inputs"][name]
    prompt[node_titled(prompt, "Positive prompt")]["inputs"]["text"] = config["prompt"]
    prompt[node_titled(prompt, "Negative prompt")]["inputs"]["text"] = config["negative_prompt"]
    x1, y1, x2, y2 = config["face_bbox"]
    set_inputs(
        prompt,
        "FlashFace_Generator",
        seed=config["seed"],
        steps=config["steps"],
        width=config["width"],
        height=config["height"],
        batch_size=config["num_samples"],
        face_x1=x1,
        face_y1=y1,
        face_x2=x2,
        face_y2=y2,
        text_guidance=config["text_guidance"],
        reference_feature_strength=config["reference_feature_strength"],
        reference_feature_strength_before_launch=config["reference_feature_strength_before_launch"],
        reference_guidance_strength=config["reference_guidance"],
        launch_timestep=config["launch_timestep"],
    )
    prompt[FACES_PREVIEW] = {"class_type": "PreviewImage", "inputs": {"images": [detect, 0]}}
    return prompt


@pytest.mark.parametrize("case", demo_cases())
def test_bundled_workflow_with_the_case_inputs_is_the_official_demo(comfyui, case, tmp_path_factory):
    demo = DemoCase(case)
    files = demo.model_files(comfyui.models_dir / "flashface")
    photos = demo.copy_photos(comfyui.input_dir)
    prompt = case_prompt(demo, files, photos)

    run = comfyui.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or comfyui.log_tail()
    images = saved_levels(comfyui, run, node_id(prompt, "SaveImage"))
    difference = demo.difference(images)
    if not difference.within(demo.image_tolerance):
        faces = saved_levels(comfyui, run, FACES_PREVIEW)
        first_faces = demo.expected["references_224"][: len(photos)]
        crops = (
            "same"
            if torch.equal(faces, first_faces)
            else f"differ by up to {int((faces.int() - first_faces.int()).abs().max())} levels"
        )
        library = "\n  ".join(diagnose(demo, case_pipeline(demo, tmp_path_factory.getbasetemp() / "demo_models")))
        pytest.fail(
            f"{demo.name} through the bundled workflow: {difference} from the official image (tolerance "
            f"{demo.image_tolerance}). The server's 224x224 face crops and the official ones: {crops}. "
            f"The library's intermediates:\n  {library}"
        )
    assert len(node_ids(prompt, "LoadImage")) == len(photos)
    print(f"{demo.name} via the bundled workflow in ComfyUI: {difference}")
