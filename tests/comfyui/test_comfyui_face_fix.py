"""The bundled face-fix workflow in a real server (every ComfyUI version the tests know): Detect
Face's face_masks output says where the picture's face is, only that region is redrawn, and the
rest of the picture comes back unchanged."""

from __future__ import annotations

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
