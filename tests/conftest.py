"""Shared fixtures. A ComfyUI server is started once per session (per version), only by tests
that ask for it."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from comfy_server import ComfyInstall, browser_installs, comfy_installs, running_server

VALUE_SOURCE_NODES = Path(__file__).parent / "data" / "value_source_nodes"  # a test-only node pack


@contextmanager
def running_comfyui(install: ComfyInstall, workdir: Path):
    """A running ComfyUI of `install` (--cpu, 127.0.0.1, free port) with this pack and the test-only
    TestValueSource node in custom_nodes/ and the bundled workflows' example photos in its input/
    folder; skips where it cannot run."""
    if install.missing:
        pytest.skip(install.missing)
    with running_server(workdir, install, custom_nodes=[VALUE_SOURCE_NODES]) as server:
        yield server


@pytest.fixture(scope="session", params=comfy_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfyui(request, tmp_path_factory):
    """A running ComfyUI, each version the tests know in turn (see `running_comfyui`)."""
    with running_comfyui(request.param, tmp_path_factory.mktemp(f"comfyui-{request.param.version}")) as server:
        yield server


@pytest.fixture(params=comfy_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfy_install(request) -> ComfyInstall:
    """Each ComfyUI version the tests know in turn, installed (for tests that run ComfyUI's modules in
    a process of their own, `comfy_process.run_with_comfyui`)."""
    if request.param.missing:
        pytest.skip(request.param.missing)
    return request.param


@pytest.fixture(scope="module", params=browser_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfyui_for_browser(request, tmp_path_factory):
    """A running ComfyUI for the web-UI tests: each version with its own frontend, and 0.8.0 with the
    newest frontend on PyPI. Module-scoped: a page's event loop must not outlive its module."""
    with running_comfyui(request.param, tmp_path_factory.mktemp(f"browser-{request.param.version}")) as server:
        yield server


@pytest.fixture(scope="session")
def comfyui_tiny(comfyui):
    """The session's ComfyUI with the tiny models in models/flashface (plus a second detector file
    and a corrupt UNet file), the tiny LoRA, the tiny ControlNets with their width-64 UNet and a
    face-less photo in input/ (names in comfy_workflows.py and tiny_flashface_models.py)."""
    from PIL import Image

    from comfy_workflows import BLANK_PHOTO, CORRUPT_MODEL, SECOND_DETECTOR, TEXT_AS_MODEL
    from tiny_flashface_models import TINY_MODELS, write_tiny_model_folders

    write_tiny_model_folders(comfyui.models_dir)
    folder = comfyui.models_dir / "flashface"
    shutil.copy(folder / TINY_MODELS["detector_name"], folder / SECOND_DETECTOR)
    (folder / CORRUPT_MODEL).write_bytes(b"\x00" * 64 + b"not a model")
    (folder / TEXT_AS_MODEL).write_text("notes: the detector is retinaface_resnet50.pth\n")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(comfyui.input_dir / BLANK_PHOTO)
    return comfyui


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """The tiny seeded model set (UNet, VAE, CLIP, RetinaFace) written once per session."""
    from tiny_flashface_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="module")
def pipeline(tiny_model_files):
    """A FlashFacePipeline of the tiny UNet, VAE and text encoder, on the CPU."""
    from flashface.models.clip_text import load_text_encoder
    from flashface.models.unet_loading import load_unet
    from flashface.models.vae import load_vae
    from flashface.pipeline import FlashFacePipeline

    return FlashFacePipeline(
        load_unet(tiny_model_files["unet_name"]),
        load_vae(tiny_model_files["vae_name"]),
        load_text_encoder(tiny_model_files["clip_name"]),
        device="cpu",
    )
