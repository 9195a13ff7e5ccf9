"""The bundled face-fix workflow in a real server (every ComfyUI version the tests know): Detect
Face's face_masks output says where the picture's face is, only that region is redrawn, and the
rest of the picture comes back unchanged."""

from __future__ import annotations

import torch

from comfy_workflows import cheap_model_workflow, level_difference, node_id, node_titled, saved_levels


def _face_fix(denoise: float) -> dict:
    prompt = cheap_model_workflow("flashface_face_fix", 128, steps=4, denoise=denoise)
    grown = [node_id(prompt, "GrowMask"), 0]
    prompt["91"] = {"class_type": "MaskToImage", "inputs": {"mask": grown}}
    prompt["92"] = {"class_type": "PreviewImage", "inputs": {"images": ["91", 0]}}
    prompt["93"] = {"class_type": "PreviewImage", "inputs": {"images": ["90", 0]}}  # the scaled picture
    return prompt


def test_the_face_fix_redraws_the_face_region_only(comfyui_tiny):
    server = comfyui_tiny
    runs = {denoise: server.run(_face_fix(denoise), timeout=600) for denoise in (0.3, 0.8)}
    for run in runs.values():
        assert run.status == "success", run.error_text() or server.log_tail()
    prompt = _face_fix(0.3)
    found = prompt[node_titled(prompt, "Face in the picture")]["inputs"]
    assert found["images"] == ["90", 0]  # the face is found in the picture itself
    run = runs[0.3]
    region = saved_levels(server, run, "92")[0, :, :, 0] > 127
    picture = saved_levels(server, run, "93")[0].int()
    assert 0 < region.float().mean() < 0.9  # a face-sized region, not the whole picture
    changes = {}
    for denoise, each in runs.items():
        fixed = saved_levels(server, each, node_id(prompt, "SaveImage"))[0].int()
        assert fixed.shape == picture.shape
        assert (fixed - picture)[~region].abs().max() == 0  # outside the face: the picture as it was
        changes[denoise] = (fixed - picture)[region].abs().float().mean()
        print(
            f"\nface fix at denoise {denoise}: "
            f"inside the face region {level_difference(fixed[region], picture[region])}"
        )
    assert 0 < changes[0.3] < changes[0.8]  # redrawn, more so at a higher denoise


def test_a_batch_of_pictures_is_fixed_picture_by_picture_each_at_its_own_face(comfyui_tiny):
    """ImageBatch of two pictures into the face fix: two images come out, each the one the face fix
    gives for that picture alone (its own face mask, encoded and pasted back onto itself)."""
    server = comfyui_tiny

    def face_fix(pictures: list[str]) -> dict:
        prompt = cheap_model_workflow("flashface_face_fix", 128, steps=3, denoise=0.5)
        scale = prompt["90"]["inputs"]
        loader = scale["image"][0]
        for index, name in enumerate(pictures):
            prompt[f"8{index}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            prompt[f"7{index}"] = {"class_type": "ImageScale", "inputs": {**scale, "image": [f"8{index}", 0]}}
        del prompt[loader]
        if len(pictures) == 1:
            prompt["90"] = prompt.pop("70")
        else:
            prompt["90"] = {"class_type": "ImageBatch", "inputs": {"image1": ["70", 0], "image2": ["71", 0]}}
        return prompt

    photos = ["flashface_astronaut.jpg", "flashface_astronaut_mirrored.jpg"]
    batch = face_fix(photos)
    run = server.run(batch, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()
    both = saved_levels(server, run, node_id(batch, "SaveImage")).int()
    assert both.shape[0] == 2  # one image per picture, not one per picture and mask
    for index, photo in enumerate(photos):
        alone = face_fix([photo])
        single = server.run(alone, timeout=600)
        assert single.status == "success", single.error_text()
        expected = saved_levels(server, single, node_id(alone, "SaveImage")).int()[0]
        print(f"\nbatch picture {index} vs the same picture alone: {level_difference(both[index], expected)}")
        assert torch.equal(both[index], expected)


def test_vae_encode_keeps_the_pictures_top_left_corner(comfyui_tiny):
    """A 136x132 picture encodes as its top-left 136x128 (the decoded image pasted back at x = y = 0
    lines up with it), not a centred crop."""
    server = comfyui_tiny
    prompt = cheap_model_workflow("flashface_img2img", 136, steps=1, denoise=0.0)
    scale = prompt["90"]["inputs"]
    scale.update(width=136, height=132)
    prompt["60"] = {
        "class_type": "ImageCrop",
        "inputs": {"image": ["90", 0], "width": 136, "height": 128, "x": 0, "y": 0},
    }
    encode = node_id(prompt, "FlashFace_VAEEncode")
    prompt["61"] = {"class_type": "FlashFace_VAEEncode", "inputs": {**prompt[encode]["inputs"], "pixels": ["60", 0]}}
    for key, source in (("62", encode), ("63", "61")):
        prompt[key] = {
            "class_type": "FlashFace_VAEDecode",
            "inputs": {"flashface_model": prompt[encode]["inputs"]["flashface_model"], "samples": [source, 0]},
        }
        prompt[f"{key}s"] = {"class_type": "PreviewImage", "inputs": {"images": [key, 0]}}
    run = server.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()
    assert torch.equal(saved_levels(server, run, "62s"), saved_levels(server, run, "63s"))
