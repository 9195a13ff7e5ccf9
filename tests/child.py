"""The child process of the tests that need a fresh Python: runs one scenario function and prints
its JSON result on a line of its own (``RESULT ...``).

    python tests/child.py '{"scenario": "process_scenarios:function", "kwargs": {...}, "comfyui": null}'

With "comfyui" (see `comfy_process.run_with_comfyui`), ComfyUI's own modules are imported first,
without a server, and this pack the way ComfyUI imports a custom node (as the package
``flashface_pack``); the scenario modules then import what they need from both. Without it, the
repository root is importable (``import flashface``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent


def import_comfyui_and_the_pack(tree: str, workdir: str, arguments: dict, extra_model_paths: str | None) -> None:
    """ComfyUI's modules on the CPU (the tests stand a meta device in for a GPU), its command-line
    `arguments` (e.g. base_directory), an extra_model_paths.yaml read as ComfyUI reads it before it
    loads custom nodes, then the pack as ComfyUI loads a custom node."""
    sys.path.insert(0, tree)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    for name, value in arguments.items():
        setattr(comfy.cli_args.args, name, value)
    import folder_paths

    if extra_model_paths:
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(extra_model_paths)
    if not arguments.get("base_directory"):
        folder_paths.set_output_directory(workdir)
    spec = importlib.util.spec_from_file_location(
        "flashface_pack", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    pack = importlib.util.module_from_spec(spec)
    sys.modules["flashface_pack"] = pack
    spec.loader.exec_module(pack)


def main(request: dict) -> None:
    comfyui = request.get("comfyui")
    if comfyui:
        import_comfyui_and_the_pack(**comfyui)
    else:
        sys.path.insert(1, str(REPO_ROOT))
    module_name, function_name = request["scenario"].split(":")
    result = getattr(importlib.import_module(module_name), function_name)(**request.get("kwargs", {}))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
