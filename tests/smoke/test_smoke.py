"""The default run's look at a real ComfyUI server (each version set up, tiny seeded models): the
pack imports without an error, every node is registered with its inputs and tooltips, and every
bundled workflow (the Generator's and the MODEL path's KSampler) runs to an image."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from comfy_installs import PACK_FOLDER_NAME
from comfy_workflows import (
    API_WORKFLOWS,
    NODE_INPUTS,
    NODE_OUTPUTS,
    api_workflow,
    cheap_model_workflow,
    node_id,
    node_ids,
)


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


def test_pack_imported_without_errors(server):
    assert server.pack_import_failure() is None
    start_up = server.log_text().split("Starting server")[0]
    tracebacks = re.findall(r"Traceback \(most recent call last\):\n(.*?)\n\n", start_up, re.S)  # stock: torchaudio
    assert not [t for t in tracebacks if PACK_FOLDER_NAME in t or "flashface" in t], start_up


@pytest.mark.parametrize("node_type", sorted(NODE_INPUTS))
def test_object_info_lists_the_node_with_its_inputs(server, node_type):
    info = server.object_info(node_type)[node_type]
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert set(inputs) == NODE_INPUTS[node_type]
    assert info["output"] == NODE_OUTPUTS[node_type]
    assert info["category"] == "FlashFace"
    assert info["display_name"].startswith("FlashFace ")
    assert info["description"]
    assert info["python_module"].startswith("custom_nodes.")
    for name, spec in inputs.items():
        assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_type}.{name} has no tooltip"


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda path: path.stem)
def test_bundled_workflow_runs_to_an_image(server, workflow):
    """The shipped graph as it is, apart from the model names and a cheaper size and step count: at
    the shipped 768 px the tiny UNet's full-resolution attention alone takes minutes on 2 CPU cores,
    and proves nothing more about the graph (the shipped values are checked by the next test)."""
    prompt = api_workflow(workflow.stem)
    if node_ids(prompt, "FlashFace_Generator"):
        generator = prompt[node_id(prompt, "FlashFace_Generator")]["inputs"]
        generator.update(
            width=generator["width"] // 3 // 8 * 8,
            height=generator["height"] // 3 // 8 * 8,
            steps=min(generator["steps"], 6),
        )
        size, batch = (generator["width"], generator["height"]), generator["batch_size"]
    else:  # FlashFace Apply + KSampler
        prompt = cheap_model_workflow(workflow.stem, 128, 6)
        latents = [prompt[key]["inputs"]["batch_size"] for key in node_ids(prompt, "EmptyLatentImage")]
        size, batch = (128, 128), latents[0] if latents else 1
    run = server.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()

    saved = run.outputs[node_id(prompt, "SaveImage")]["images"]
    assert len(saved) == batch
    for image in saved:
        picture = Image.open(io.BytesIO(server.view(image)))
        assert picture.size == size
    for preview in node_ids(prompt, "PreviewImage"):  # one per Detect Face of reference photos
        face_previews = run.outputs[preview]["images"]
        detect = prompt[prompt[preview]["inputs"]["images"][0]]["inputs"]
        assert len(face_previews) == sum(1 for name in detect if name.startswith("images"))  # one per photo
        for image in face_previews:
            Image.open(io.BytesIO(server.view(image))).verify()
