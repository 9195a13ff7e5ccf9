"""The pack's node modules that import no ComfyUI (nodes/declare.py, inputs.py, images.py, people.py,
examples.py), imported in the test process as ComfyUI imports the pack (package ``flashface_pack``,
relative imports of the library) but without nodes/__init__.py, which registers the nodes and needs
ComfyUI's modules."""

from __future__ import annotations

import importlib
import sys
import types
from types import ModuleType

from comfy_installs import REPO_ROOT

PACK = "flashface_pack"


def _package(name: str, folder) -> None:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package


def node_module(name: str) -> ModuleType:
    """nodes/<name>.py of the pack (its library is the pack's copy, ``flashface_pack.flashface``)."""
    _package(PACK, REPO_ROOT)
    _package(f"{PACK}.nodes", REPO_ROOT / "nodes")
    return importlib.import_module(f"{PACK}.nodes.{name}")


def pack_module(name: str) -> ModuleType:
    """A library module as the nodes see it, e.g. ``flashface.errors`` -> flashface_pack.flashface.errors."""
    _package(PACK, REPO_ROOT)
    return importlib.import_module(f"{PACK}.{name}")
