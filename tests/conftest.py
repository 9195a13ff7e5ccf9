"""Shared fixtures. The ComfyUI server is started once per session, only by tests that ask for it."""

import pytest

from comfy_server import ComfyServer, unavailable_reason


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """A running ComfyUI 0.3.75 (--cpu, 127.0.0.1, free port) with this pack in custom_nodes/."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
