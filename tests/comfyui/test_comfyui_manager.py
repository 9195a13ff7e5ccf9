"""Installed by the real ComfyUI-Manager (its `cm-cli` from the PyPI package comfyui-manager) into a
fresh ComfyUI of each version the tests know, the way a user's Manager does it: a clone of the pack
(from a local git URL, so nothing leaves this machine), `pip install` of each requirements line,
then install.py; or `cm-cli post-install` on a pack already in custom_nodes/. Then ComfyUI starts
and lists every node of the pack. The pack installed is the repository's last commit."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

from comfy_installs import REPO_ROOT, comfy_installs
from comfy_server import ComfyServer
from comfy_workflows import NODE_INPUTS

PACK_NODES = set(NODE_INPUTS)
REPOSITORY_NAME = "flashface-portrait"


@pytest.fixture(params=comfy_installs(), ids=lambda install: f"comfyui-{install.version}")
def fresh_comfyui(request, tmp_path):
    """A fresh ComfyUI tree whose own folder is the instance (the Manager installs into its
    custom_nodes/), with nothing in custom_nodes/ yet."""
    install = request.param
    if install.missing:
        pytest.skip(install.missing)
    if importlib.util.find_spec("cm_cli") is None:
        pytest.skip("the ComfyUI-Manager CLI is missing (PyPI comfyui-manager): run `bash tests/setup.sh`")
    server = ComfyServer(tmp_path, install, pack_dir=None, instance=tmp_path / "comfyui")
    server.prepare()
    yield server
    server.stop()


def cm_cli(server: ComfyServer, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COMFYUI_PATH=str(server.comfy_dir), GIT_TERMINAL_PROMPT="0", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [server.install.python_exe, "-m", "cm_cli", *arguments],
        cwd=server.comfy_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"cm-cli {' '.join(arguments)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def assert_pack_runs(server: ComfyServer, folder_name: str) -> None:
    server.start()
    assert server.pack_import_failure(folder_name) is None, server.log_tail()
    listed = server.object_info()
    assert {node for node in listed if node.startswith("FlashFace_")} == PACK_NODES, sorted(listed)[:5]
    assert all(listed[node]["python_module"] == f"custom_nodes.{folder_name}" for node in PACK_NODES)


def test_manager_installs_the_pack_from_a_git_url(fresh_comfyui, tmp_path):
    bare = tmp_path / "repositories" / f"{REPOSITORY_NAME}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO_ROOT), str(bare)], check=True)
    done = cm_cli(fresh_comfyui, "install", f"file://localhost{bare}")
    installed = fresh_comfyui.comfy_dir / "custom_nodes" / REPOSITORY_NAME
    assert "[INSTALLED]" in done.stdout and (installed / "__init__.py").is_file(), done.stdout[-3000:]
    assert "[FlashFace install] done" in done.stdout  # install.py ran, and found nothing missing to fail on
    assert "torch" not in [line.split()[-1] for line in done.stdout.splitlines() if "'install', " in line]
    assert_pack_runs(fresh_comfyui, REPOSITORY_NAME)


def test_manager_post_install_on_a_pack_already_in_custom_nodes(fresh_comfyui):
    folder = fresh_comfyui.comfy_dir / "custom_nodes" / "ComfyUI-FlashFace"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(folder)], check=True)
    done = cm_cli(fresh_comfyui, "post-install", str(folder))
    assert "[FlashFace install] done" in done.stdout, done.stdout[-3000:]
    assert_pack_runs(fresh_comfyui, "ComfyUI-FlashFace")
