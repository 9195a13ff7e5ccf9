"""What a careless or hostile user does through the HTTP API of a real ComfyUI: model files truncated,
overwritten or replaced under a running server, corrupt files picked, numbers that are not numbers,
boxes and masks with no area, photos too small to hold a face, too many faces, cancel during
detection, values of the wrong type. The server stays up, every failure says what to do, and the
next prompt works."""

from __future__ import annotations

import math
import os
import shutil
import time

import pytest
import torch

from comfy_workflows import (
    CORRUPT_MODEL,
    assert_server_healthy,
    expect_node_error,
    node_id,
    quick_prompt,
    run_to_levels,
    set_inputs,
)
from tiny_flashface_models import TINY_MODELS
from tiny_unet import write_tiny_unet

VICTIMS = {"unet_name": "victim_unet.safetensors", "detector_name": "victim_retinaface.pth"}


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


@pytest.fixture
def victim(server, request):
    """(Load Model input, path) of a fresh copy of a tiny model file that the test may damage."""
    slot = request.param
    folder = server.models_dir / "flashface"
    path = folder / VICTIMS[slot]
    shutil.copy(folder / TINY_MODELS[slot], path)
    return slot, path


def unet_file_like(server, name: str, seed: int):
    """A tiny UNet with other weights (the same size) under `name` in a scratch folder."""
    return write_tiny_unet(server.instance / "scratch" / name, seed=seed, context_dim=32)


# ------------------------------------------------------------------ model files changed on disk
@pytest.mark.parametrize("victim", list(VICTIMS), indirect=True)
def test_truncating_a_loaded_model_file_leaves_the_server_up(server, victim):
    slot, path = victim
    prompt = set_inputs(quick_prompt(seed=31), "FlashFace_LoadModel", **{slot: path.name})
    run_to_levels(server, prompt)
    with open(path, "r+b") as file:  # what `truncate -s 0` does
        file.truncate(0)
    run = expect_node_error(server, prompt, "FlashFace_LoadModel", path.name, "empty (0 bytes)")
    assert run.error["exception_type"].endswith("ModelFileError")
    run_to_levels(server, quick_prompt(seed=31))  # the untouched files still work


@pytest.mark.parametrize("victim", ["unet_name"], indirect=True)
def test_a_model_file_overwritten_in_place_or_replaced_is_loaded_again(server, victim):
    _, path = victim
    prompt = set_inputs(quick_prompt(seed=32), "FlashFace_LoadModel", unet_name=path.name)
    before = run_to_levels(server, prompt)
    other = unet_file_like(server, "other_unet.safetensors", seed=5)
    with open(path, "r+b") as file:  # cp / curl -o: the same file (inode), new bytes
        file.write(other.read_bytes())
    overwritten = run_to_levels(server, prompt)
    shutil.copy(other, server.models_dir / "flashface" / "reference_unet.safetensors")
    reference = run_to_levels(
        server, set_inputs(quick_prompt(seed=32), "FlashFace_LoadModel", unet_name="reference_unet.safetensors")
    )
    assert torch.equal(overwritten, reference) and not torch.equal(overwritten, before)

    replacement = unet_file_like(server, "replacement_unet.safetensors", seed=6)
    os.replace(replacement, path)  # an atomic replace: a new file under the old name
    replaced = run_to_levels(server, prompt)
    assert not torch.equal(replaced, overwritten)


def test_a_corrupt_file_picked_by_mistake_keeps_the_good_model_loaded(server):
    good = quick_prompt(seed=33)
    run_to_levels(server, good)
    loads = server.log_text().count(f"from {server.models_dir / 'flashface' / TINY_MODELS['unet_name']}")
    expect_node_error(
        server,
        set_inputs(quick_prompt(seed=33), "FlashFace_LoadModel", unet_name=CORRUPT_MODEL),
        "FlashFace_LoadModel",
        CORRUPT_MODEL,
    )
    run_to_levels(server, good)
    assert server.log_text().count(f"from {server.models_dir / 'flashface' / TINY_MODELS['unet_name']}") == loads


# ------------------------------------------------------------------ numbers, boxes, masks
@pytest.mark.parametrize(
    "node, values, phrases",
    [
        ("FlashFace_Generator", {"text_guidance": math.nan}, ["must be a finite number", "nan"]),
        ("FlashFace_Generator", {"reference_guidance_strength": "nan"}, ["must be a finite number"]),
        ("FlashFace_Generator", {"face_x1": 0.5, "face_y1": 0.5, "face_x2": 0.5, "face_y2": 0.5}, ["covers no part"]),
        ("FlashFace_Generator", {"face_x1": 1.0, "face_y1": 1.0, "face_x2": 1.0, "face_y2": 1.0}, ["covers no part"]),
        ("FlashFace_Generator", {"face_x1": math.nan}, ["face box"]),
        ("FlashFace_DetectFace", {"threshold": math.nan}, ["detection threshold must be a number from 0.0 to 0.99"]),
    ],
)
def test_numbers_that_would_give_a_silently_wrong_image_are_refused(server, node, values, phrases):
    expect_node_error(server, set_inputs(quick_prompt(seed=34), node, **values), node, *phrases)


@pytest.mark.parametrize("value, phrase", [(0.0, "marks no face area"), (math.nan, "not numbers")])
def test_an_empty_or_broken_face_mask_is_refused(server, value, phrase):
    prompt = quick_prompt(seed=35)
    prompt["80"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 64, "height": 64}}
    prompt[node_id(prompt, "FlashFace_Generator")]["inputs"]["face_mask"] = ["80", 0]
    expect_node_error(server, prompt, "FlashFace_Generator", phrase)


# ------------------------------------------------------------------ photos
@pytest.mark.parametrize("width, height", [(2, 4000), (1, 1), (31, 500)])
def test_a_photo_too_small_for_a_face_is_explained(server, width, height):
    prompt = quick_prompt(seed=36)
    prompt["81"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x808080},
    }
    prompt[node_id(prompt, "FlashFace_DetectFace")]["inputs"]["images"] = ["81", 0]
    expect_node_error(server, prompt, "FlashFace_DetectFace", f"({width}x{height}) is too small", "at least 32 pixels")


def test_more_faces_than_a_generation_takes_are_refused_at_detection(server):
    prompt = quick_prompt(seed=37)
    photo = node_id(prompt, "LoadImage")
    prompt["82"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [photo, 0], "amount": 17}}
    prompt[node_id(prompt, "FlashFace_DetectFace")]["inputs"]["images"] = ["82", 0]
    expect_node_error(server, prompt, "FlashFace_DetectFace", "more than 16 faces", "at most 16 reference faces")


def test_cancel_stops_detect_face_between_photos(server):
    """Cancel during a long batch of photos: detection stops at the next photo, not at the end."""
    photos = 16

    def detection_prompt(threshold):  # a new threshold each time: ComfyUI would reuse a cached result
        prompt = quick_prompt(seed=38)
        photo = node_id(prompt, "LoadImage")
        prompt["83"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [photo, 0], "amount": photos}}
        detect = node_id(prompt, "FlashFace_DetectFace")
        prompt[detect]["inputs"].update(images=["83", 0], threshold=threshold)
        del prompt[node_id(prompt, "FlashFace_Generator")], prompt[node_id(prompt, "SaveImage")]
        return prompt, detect

    prompt, detect = detection_prompt(0.61)
    whole = server.run(prompt)
    assert whole.status == "success", whole.error_text()
    whole_seconds = whole.seconds
    sent = []

    def cancel_when_detection_starts(message, srv):
        if message["type"] == "executing" and message["data"].get("node") == detect and not sent:
            time.sleep(0.3)
            sent.append(time.monotonic())
            srv.interrupt()

    prompt, detect = detection_prompt(0.62)
    run = server.run(prompt, on_message=cancel_when_detection_starts)
    stopped_after = time.monotonic() - sent[0]
    assert run.status == "interrupted", run.error_text()
    print(f"\n{photos} photos: whole run {whole_seconds:.1f} s; stopped {stopped_after:.2f} s after the cancel")
    assert stopped_after < whole_seconds / 3
    assert_server_healthy(server)


# ------------------------------------------------------------------ values of the wrong type
@pytest.mark.parametrize(
    "target, source, phrase",
    [
        ("positive", "text", "The positive input got text; connect FlashFace CLIP Text Encode"),
        ("flashface_model", "image", "The flashface_model input got a tensor"),
    ],
)
def test_a_value_of_the_wrong_type_through_a_switch_is_explained(server, target, source, phrase):
    if "ComfySwitchNode" not in server.object_info():
        pytest.skip("this ComfyUI has no Switch node (ComfyUI 0.8.0 has)")
    prompt = quick_prompt(seed=39)
    generator = node_id(prompt, "FlashFace_Generator")
    wrong = {"text": ["84", 0], "image": [node_id(prompt, "LoadImage"), 0]}[source]
    prompt["84"] = {"class_type": "PrimitiveString", "inputs": {"value": "a portrait"}}
    prompt["85"] = {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": wrong, "on_false": wrong}}
    prompt[generator]["inputs"][target] = ["85", 0]
    expect_node_error(server, prompt, "FlashFace_Generator", phrase)
