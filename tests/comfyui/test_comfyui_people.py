"""FlashFace Person and the people inputs of the Generator and FlashFace Apply, with ComfyUI's own
modules (one process, no server; the bundled two-people workflow runs in a real server in
test_comfyui_integration): one person given as a Person is the same image as the faces and box
given directly, two people give another, and wrong wiring is explained."""

from __future__ import annotations

from comfy_process import run_with_comfyui, tiny_paths


def test_people_nodes_chain_and_one_person_is_todays_image(comfy_install, tiny_model_files, tmp_path):
    result = run_with_comfyui(
        comfy_install,
        "two_people",
        tmp_path,
        **tiny_paths(tiny_model_files),
    )
    assert result["chained"] == [1, 2, [2, 1], [[0.05, 0.2, 0.35, 0.5], [0.6, 0.2, 0.9, 0.5]]]
    # one person as a Person node (its box; the Generator's own box is then unused) is the same image
    assert result["generator_one"] == 0 and result["model_one"] == 0
    assert result["generator_two"] > 0 and result["model_two"] > 0
    expected = {
        "neither": "Connect reference_faces (face crops of one person, from FlashFace Detect Face) or people",
        "both": "Both are connected",
        "people text": "The people input got text; connect the people output of FlashFace Person",
        "chain text": "The people input got a list",
        "mask beside people": "with several people give each their own face box or mask",
        "zero box": "Person 2 has the all-zero face box",
        "apply neither": "Connect reference_faces",
    }
    for name, phrase in expected.items():
        assert phrase in result[name], f"{name}: {result[name]}"
