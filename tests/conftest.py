"""Shared fixtures. The ComfyUI server is started once per session, only by tests that ask for it."""

import shutil

import pytest

from comfy_server import REPO_ROOT, ComfyServer, unavailable_reason

EXAMPLE_PHOTOS = REPO_ROOT / "workflows" / "input"


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """A running ComfyUI 0.3.75 (--cpu, 127.0.0.1, free port) with this pack in custom_nodes/ and
    the bundled workflows' example photos in its input/ folder."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    server.prepare()
    for photo in EXAMPLE_PHOTOS.iterdir():
        shutil.copy(photo, server.input_dir / photo.name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """The tiny seeded model set (UNet, VAE, CLIP, RetinaFace) written once per session."""
    from tiny_flashface_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))
