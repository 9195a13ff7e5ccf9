"""Every bundled template as a new user meets it: a ComfyUI started for the first time with the
pack (the example photos copied in at its first start), each template opened from the server's
template list in the browser, model files picked, one Queue, an image. In a module of its own: its
browser must not share the event loop of test_comfyui_browser.py's page."""

from __future__ import annotations

import time

import pytest

from comfy_browser import ComfyPage, browser_unavailable_reason
from comfy_installs import REPO_ROOT, browser_installs
from comfy_server import running_server
from tiny_flashface_models import (
    CONTROLNET_UNET,
    TINY_CONTROLNETS,
    TINY_LORA,
    TINY_MODELS,
    TINY_SD15,
    write_tiny_model_folders,
)

WORKFLOWS_DIR = REPO_ROOT / "workflows"


@pytest.fixture(scope="module", params=browser_installs(), ids=lambda install: f"comfyui-{install.version}")
def fresh_instance(request, tmp_path_factory):
    """A ComfyUI started for the first time with the pack: nothing copied into its input folder."""
    install = request.param
    if install.missing:
        pytest.skip(install.missing)
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_server(
        tmp_path_factory.mktemp(f"fresh-{install.version}"),
        install,
        models=write_tiny_model_folders,
        example_photos=False,
    ) as server:
        yield server


def test_every_template_runs_with_one_queue_in_a_fresh_instance(fresh_instance, tmp_path_factory):
    """As a new user: open each template from the server's template list, pick the model files
    (the tiny ones: the official files are not here) and a small size, press Queue, get an image.
    The example photos are there because the pack put them into the input folder at its first start."""
    photos = sorted(path.name for path in (WORKFLOWS_DIR / "input").iterdir())
    assert set(photos) <= {path.name for path in fresh_instance.input_dir.iterdir()}
    ((pack, names),) = fresh_instance.get("/workflow_templates").items()
    shots = tmp_path_factory.mktemp("template-screenshots")
    with ComfyPage(fresh_instance) as ui:
        for name in sorted(names):
            template = fresh_instance.get(f"/api/workflow_templates/{pack}/{name}.json")
            ui.load_workflow(template, name)
            missing = [e.text for e in ui.errors() if e.kind == "http" and e.phase == name]
            assert not missing, missing  # e.g. 404 for a photo the Load Image nodes show
            assert not [d for d in ui.dialogs() if "missing" in d.lower()], ui.dialogs()
            assert ui.set_widgets("FlashFace_LoadModel", **TINY_MODELS) == 1
            ui.set_widgets("LoraLoaderModelOnly", lora_name=TINY_LORA)
            ui.set_widgets("FlashFace_GraftCheckpoint", **TINY_SD15)
            if ui.set_widgets("ControlNetLoader", control_net_name=TINY_CONTROLNETS["random"]):
                ui.set_widgets("FlashFace_LoadModel", unet_name=CONTROLNET_UNET)
            if ui.set_widgets("FlashFace_Generator", width=64, height=64, steps=2) == 0:  # a MODEL template
                assert ui.set_widgets("KSampler", steps=2) == 1
                ui.set_widgets("EmptyLatentImage", width=64, height=64)
            before = len(fresh_instance.get("/history"))
            ui.queue()
            history = _wait_for_history(fresh_instance, before)
            assert history["status"]["status_str"] == "success", history["status"]
            images = [
                image
                for output in history["outputs"].values()
                for image in output.get("images", [])
                if image["type"] == "output"
            ]
            assert images, history["outputs"]
            ui.page.wait_for_timeout(500)
            print(f"\n{name}: {len(images)} image(s); screenshot {ui.screenshot(shots / f'{name}.png')}")
        errors = [f"[{e.phase}] {e.kind}: {e.text[:300]}" for e in ui.errors()]
    assert not errors, "\n".join(errors)


def _wait_for_history(server, entries_before: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get("/history")
        finished = [
            entry
            for entry in history.values()
            if entry.get("status", {}).get("completed") is not None
            or entry.get("status", {}).get("status_str") == "error"
        ]
        if len(history) > entries_before and len(finished) == len(history):
            return list(history.values())[-1]
        time.sleep(0.5)
    raise AssertionError(f"the queued prompt did not finish within {timeout:.0f} s")
