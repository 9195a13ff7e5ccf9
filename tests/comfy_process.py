"""Run a scenario function in a fresh Python process (`child.py`): with ComfyUI's own modules and
this pack imported the way ComfyUI imports it, without a server (`run_with_comfyui`), for tests of
how the nodes use ComfyUI's model management (partial loading, devices), which a server on a
CPU-only machine cannot show; or with the library alone (`child_command`), where a test needs a
process of its own. A separate process keeps ComfyUI's top-level modules (`nodes`, `utils`,
`server`...) out of the test process. Scenarios are plain functions in `comfy_scenarios` and
`process_scenarios`, returning a JSON-serializable value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

from comfy_installs import ComfyInstall

CHILD = Path(__file__).resolve().parent / "child.py"


def child_command(scenario: str, python: str = sys.executable, comfyui: dict | None = None, **kwargs: Any) -> list[str]:
    """The command that runs `scenario` ("module:function") with `kwargs` in a fresh `python`."""
    return [python, str(CHILD), json.dumps({"scenario": scenario, "kwargs": kwargs, "comfyui": comfyui})]


def result_of(stdout: str) -> Any:
    """The scenario's result from the child's output (None when it printed none)."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else None


class TinyPaths(TypedDict):
    unet: str
    vae: str
    clip: str


def tiny_paths(files: dict) -> TinyPaths:
    """The tiny UNet, VAE and text encoder files of the `tiny_model_files` fixture, as a scenario takes them."""
    return TinyPaths(unet=str(files["unet_name"]), vae=str(files["vae_name"]), clip=str(files["clip_name"]))


def run_with_comfyui(
    install: ComfyInstall,
    scenario: str,
    workdir: Path,
    timeout: float = 600,
    *,
    arguments: dict | None = None,
    extra_model_paths: Path | None = None,
    **kwargs: Any,
) -> Any:
    """The result of `comfy_scenarios.<scenario>(**kwargs)` run with that ComfyUI; a failure raises
    with the process output. `arguments`: ComfyUI command-line options (``{"base_directory": ...}``);
    `extra_model_paths`: an extra_model_paths.yaml read before the pack is imported."""
    comfyui = dict(
        tree=str(install.source_tree),
        workdir=str(workdir),
        arguments=dict(arguments or {}),
        extra_model_paths=str(extra_model_paths) if extra_model_paths else None,
    )
    done = subprocess.run(
        child_command(f"comfy_scenarios:{scenario}", install.python_exe, comfyui, **kwargs),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result = result_of(done.stdout)
    if done.returncode != 0 or result is None:
        raise AssertionError(
            f"the ComfyUI process failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return result
