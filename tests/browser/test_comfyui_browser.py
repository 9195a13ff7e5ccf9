"""The pack in ComfyUI's real web UI (headless Debian Chromium): every bundled workflow opens with no
missing node and no console error, exports to its committed API copy, and the nodes are found by
the node search."""

from __future__ import annotations

import json

import pytest

from comfy_browser import ComfyPage, browser_unavailable_reason, without_meta, workflow_node_types
from comfy_installs import REPO_ROOT
from tiny_flashface_models import use_tiny_models

WORKFLOWS_DIR = REPO_ROOT / "workflows"
UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
# UI workflows as an earlier version of the pack saved them (v0.1: bundled on 2026-11-30).
SAVED_WORKFLOWS = sorted((REPO_ROOT / "tests" / "data" / "saved_workflows").glob("*.json"))
PACK_NODES = [
    "FlashFace Load Model",
    "FlashFace Detect Face",
    "FlashFace CLIP Text Encode",
    "FlashFace Generator",
    "FlashFace Apply (MODEL for KSampler)",
    "FlashFace Sigmas",
    "FlashFace VAE Encode",
    "FlashFace VAE Decode",
    "FlashFace Person (experimental)",
    "FlashFace Graft Checkpoint (experimental)",
]


@pytest.fixture(scope="module")
def ui(comfyui_for_browser):
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ComfyPage(comfyui_for_browser) as page:
        yield page


def test_workflows_folder_has_what_the_template_browser_needs():
    api_copies = {path.stem for path in (WORKFLOWS_DIR / "api").glob("*.json")}
    assert {workflow.stem for workflow in UI_WORKFLOWS} == api_copies and len(api_copies) >= 10
    for workflow in UI_WORKFLOWS:
        assert workflow.with_suffix(".jpg").is_file(), f"{workflow.name} has no thumbnail"
        assert (WORKFLOWS_DIR / "api" / workflow.name).is_file(), f"{workflow.name} has no API copy"
        assert isinstance(json.loads(workflow.read_text()).get("nodes"), list), f"{workflow.name} is not UI format"


def test_the_server_lists_the_pack_templates(comfyui_for_browser):
    templates = comfyui_for_browser.get("/workflow_templates")
    (listed,) = templates.values()
    assert sorted(listed) == sorted(workflow.stem for workflow in UI_WORKFLOWS)


@pytest.mark.parametrize("workflow", SAVED_WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_saved_by_an_earlier_version_loads_and_runs(ui, comfyui_for_browser, workflow, tiny_model_files):
    """ComfyUI stores widget values by position: inputs added since then take their defaults, an
    input removed since then (CLIP Text Encode's quality_postfix) is dropped, the graph runs."""
    data = json.loads(workflow.read_text())
    nodes = ui.load_workflow(data, workflow.name)
    assert all(node["known"] for node in nodes)
    exported = ui.export_api()
    current = WORKFLOWS_DIR / "api" / workflow.name.split("_", 1)[1]
    if workflow.stem.endswith("one_photo"):  # the graph itself did not change since
        assert exported == without_meta(json.loads(current.read_text()))
    generator = next(node["inputs"] for node in exported.values() if node["class_type"] == "FlashFace_Generator")
    assert generator["seed"] == 42 and generator["steps"] == 35 and generator["preset"] == "none"
    assert generator["prompt_postfixes"] is True and generator["pad_references"] is True
    folder = comfyui_for_browser.models_dir / "flashface"
    folder.mkdir(parents=True, exist_ok=True)
    for path in tiny_model_files.values():
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path)
    generator.update(steps=2, width=64, height=64)
    run = comfyui_for_browser.run(use_tiny_models(exported), timeout=600)
    assert run.status == "success", run.error_text() or comfyui_for_browser.log_tail()


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda path: path.stem)
def test_bundled_workflow_opens_with_no_missing_node(ui, workflow, tmp_path_factory):
    data = json.loads(workflow.read_text())
    nodes = ui.load_workflow(data, workflow.name)
    assert workflow_node_types(data) <= ui.registered_node_types()
    assert len(nodes) == len(data["nodes"]) and all(node["known"] for node in nodes)
    assert not [d for d in ui.dialogs() if "missing" in d.lower()], ui.dialogs()
    shot = ui.screenshot(tmp_path_factory.mktemp("screenshots") / f"{workflow.stem}.png")
    print(f"\nscreenshot: {shot}")
    exported = ui.export_api()
    committed = without_meta(json.loads((WORKFLOWS_DIR / "api" / workflow.name).read_text()))
    assert exported == committed, "the UI workflow and its API copy differ: rerun tests/build_workflows.py"


def test_node_search_finds_every_pack_node(ui):
    ui.phase = "search"
    found = ui.search_nodes("FlashFace")
    assert set(PACK_NODES) <= set(found), found


def test_no_console_errors_beyond_stock_comfyui_noise(ui):
    """Runs last in this module: covers start-up, every workflow load and the search."""
    errors = [f"[{e.phase}] {e.kind}: {e.text[:300]}" for e in ui.errors()]
    assert not errors, "\n".join(errors)
