"""Run a Python snippet in a fresh process that has ComfyUI's own modules and this pack imported
the way ComfyUI imports it, without a server: for tests of how the nodes use ComfyUI's model
management (partial loading, devices), which a server on a CPU-only machine cannot show.

The snippet runs with `comfy`, `mm` (comfy.model_management), `folder_paths`, `torch` and
`pack` (this repository imported as a custom-node package) defined, and reports by assigning a
JSON-serializable value to `result`. A separate process keeps ComfyUI's top-level modules
(`nodes`, `utils`, `server`...) out of the test process.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from comfy_server import REPO_ROOT, ComfyInstall

_PRELUDE = """
import importlib.util, json, sys
sys.path.insert(0, {tree!r})
import comfy.cli_args
comfy.cli_args.args.cpu = True  # no GPU here; the tests stand a meta device in for one
for name, value in {arguments!r}.items():  # command-line options, e.g. base_directory
    setattr(comfy.cli_args.args, name, value)
import torch
import comfy.model_management as mm
import comfy.model_patcher, comfy.ops, folder_paths
if {extra_model_paths!r}:  # what ComfyUI reads before it loads custom nodes
    from utils.extra_config import load_extra_path_config
    load_extra_path_config({extra_model_paths!r})
if not {arguments!r}.get("base_directory"):
    folder_paths.set_output_directory({workdir!r})
spec = importlib.util.spec_from_file_location("flashface_pack", {init!r},
                                              submodule_search_locations=[{repo!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["flashface_pack"] = pack
spec.loader.exec_module(pack)
result = None
"""
_REPORT = "\nprint('RESULT ' + json.dumps(result))\n"

# A snippet's start that loads the tiny models as Load Model does (format with unet, vae, clip paths):
# `unet`, `vae`, `clip` patchers and `flashface`, the FLASHFACE_MODEL of them.
TINY_FLASHFACE = """
from pathlib import Path
from flashface_pack.nodes import load_model

unet = load_model._load_unet(Path({unet!r}), "fp32")
vae = load_model._load_vae(Path({vae!r}), "official")
clip = load_model._load_text_encoder(Path({clip!r}))
flashface = load_model.FlashFaceModel(unet=unet, vae=vae, text_encoder=clip, detector=None)
"""

# A snippet's helper: `messages(calls)` runs each call of {name: callable} and gives, by name, the
# FlashFaceError's message, "no error", or "RAW <type>: <message>" for any other exception.
MESSAGES_OF_CALLS = """
def messages(calls):
    from flashface_pack.flashface.errors import FlashFaceError

    found = {}
    for name, call in calls.items():
        try:
            call()
            found[name] = "no error"
        except FlashFaceError as error:
            found[name] = str(error)
        except Exception as error:
            found[name] = f"RAW {type(error).__name__}: {error}"
    return found
"""


def run_with_comfyui(
    install: ComfyInstall,
    snippet: str,
    workdir: Path,
    timeout: float = 600,
    *,
    arguments: dict | None = None,
    extra_model_paths: Path | None = None,
) -> Any:
    """`result` of `snippet` run as described above with that ComfyUI; a failure raises with the
    process output. `arguments`: ComfyUI command-line options (``{"base_directory": ...}``);
    `extra_model_paths`: an extra_model_paths.yaml read before the pack is imported."""
    if install.missing:
        raise RuntimeError(install.missing)
    prelude = _PRELUDE.format(
        tree=str(install.tree),
        workdir=str(workdir),
        init=str(REPO_ROOT / "__init__.py"),
        repo=str(REPO_ROOT),
        arguments=dict(arguments or {}),
        extra_model_paths=str(extra_model_paths) if extra_model_paths else "",
    )
    done = subprocess.run(
        [install.python_exe, "-c", prelude + textwrap.dedent(snippet) + _REPORT],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(
            f"the ComfyUI process failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])
