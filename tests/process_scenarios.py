"""Scenarios that need a Python process of their own, run by `child.py` (`comfy_process.child_command`)
with the library importable; each returns what its test checks, as JSON-serializable values."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from torch import nn


def module_outlives_its_file(path: str) -> float:
    """Load `TwoLayersBig` from `path`, overwrite the file with zeros, then truncate it: the module
    must keep its weights (a change raises) and reading them must not fault (SIGBUS would end this
    process, not the test run). The sum of two of its weights."""
    import torch

    from flashface.models.checkpoint import TensorPlan, load_module, open_checkpoint

    checkpoint = open_checkpoint(path)
    plan = {key: TensorPlan.copy(key) for key in checkpoint.keys()}
    module = load_module(TwoLayersBig, checkpoint, plan, what="test model")
    checkpoint.close()
    before = module.linear.weight.clone()
    size = Path(path).stat().st_size
    with open(path, "r+b") as file:  # overwritten in place
        file.write(b"\0" * size)
    if not torch.equal(module.linear.weight, before):
        raise AssertionError("the module changed with the file")
    with open(path, "r+b") as file:  # truncated
        file.truncate(0)
    return float(module.linear.weight.sum() + module.norm.weight.sum())


def download_beside_another(index: int, folder: str, url: str, md5: str) -> str:
    """Ask for the registry file "t" at `url` once the other process is ready too, the second one
    0.3 s later; its path. Both log to stderr (the test reads who waited)."""
    from flashface.models.model_registry import MODEL_REGISTRY, get_model_path
    from flashface.utils.cache_utils import DownloadSettings

    logging.basicConfig(level=logging.INFO)
    Path(folder, f"ready-{index}").touch()
    while len([name for name in os.listdir(folder) if name.startswith("ready-")]) < 2:
        time.sleep(0.01)
    time.sleep(0.3 * index)
    MODEL_REGISTRY["t"] = {"url": url, "md5": md5, "filename": "model.pth", "description": "test"}
    settings = DownloadSettings(read_timeout=5, backoff_seconds=0.01)
    return str(get_model_path("t", models_dir=str(Path(folder) / "models"), settings=settings))


def modules_imported_by(modules: list[str], families: list[str]) -> list[str]:
    """The modules of the top-level packages `families` that importing `modules` imports."""
    import importlib

    for module in modules:
        importlib.import_module(module)
    return sorted(name for name in sys.modules if name.split(".")[0] in families)


class TwoLayersBig(nn.Module):
    """Two layers big enough that their file is memory-mapped in pages."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(192, 128)
        self.norm = nn.LayerNorm(128)
