"""Discovery of the parity fixtures computed with the official FlashFace code.

The fixture folder comes from the environment variable FLASHFACE_FIXTURES (default
``../shared/fixtures`` next to the repository). Cases are found by listing ``cases/`` and
selected by the ``kind`` in each ``case.json``; every parameter is read from that file. Where the
folder is absent (a user's checkout) the parity tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashface.models.checkpoint import StateDictCheckpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    configured = os.environ.get("FLASHFACE_FIXTURES")
    return Path(configured).resolve() if configured else (REPO_ROOT.parent / "shared" / "fixtures").resolve()


def _missing_reason() -> str:
    return (
        f"parity fixtures not found at {fixtures_dir()} "
        "(set FLASHFACE_FIXTURES to the folder holding cases/ and manifests/)"
    )


@dataclass
class Case:
    name: str
    path: Path
    config: dict

    @property
    def inputs(self) -> dict:
        return load_file(self.path / "inputs.safetensors")

    @property
    def expected(self) -> dict:
        return load_file(self.path / "expected.safetensors")

    def weights_dir(self) -> Path:
        """Folder holding this case's weight files (itself, or the one named by weights_from)."""
        source = self.config.get("weights_from")
        return self.path.parent / source if source else self.path

    @property
    def atol(self) -> float:
        return float(self.config["tolerance"]["atol"])

    @property
    def rtol(self) -> float:
        return float(self.config["tolerance"]["rtol"])


def cases(*kinds: str) -> list:
    """pytest params for every fixture case of the given kinds (one skipping param if none)."""
    root = fixtures_dir() / "cases"
    if not root.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=_missing_reason()), id="no-fixtures")]
    found = []
    for case_dir in sorted(p for p in root.iterdir() if (p / "case.json").is_file()):
        config = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
        if config.get("kind") in kinds:
            found.append(pytest.param(Case(case_dir.name, case_dir, config), id=case_dir.name))
    if not found:
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason=f"no fixture case of kind {kinds} in {root}"), id="no-cases"
            )
        ]
    return found


def manifest(name: str) -> Path:
    """Path of a manifest JSON; skips the calling test when the fixtures are absent."""
    path = fixtures_dir() / "manifests" / name
    if not path.is_file():
        pytest.skip(_missing_reason())
    return path


def load_fixture_module(path: Path):
    """A Python file shipped with the fixtures (a weight recipe), imported from where it is."""
    spec = importlib.util.spec_from_file_location(f"fixture_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RETINAFACE_MANIFEST = "retinaface_resnet50.json"


def recipe_detector_state(recipe: str, seed: int, weight_scale: float) -> dict:
    """RetinaFace weights rebuilt by a fixture recipe named like "cases/retinaface/recipe.py
    state_dict_from_manifest" (file relative to the fixtures folder, then the function)."""
    file, function = recipe.split()
    module = load_fixture_module(fixtures_dir() / file)
    return getattr(module, function)(manifest(RETINAFACE_MANIFEST), seed, weight_scale)


_DTYPES_BY_NAME = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class ManifestCheckpoint(StateDictCheckpoint):
    """A real published file stood in for by its key/shape manifest (`manifests/*.json`: entries
    [name, shape, dtype] in state-dict order), as meta-device tensors: the loaders can be shown to
    accept the real files without having them."""

    def __init__(self, manifest_path: str | os.PathLike):
        with open(manifest_path, encoding="utf-8") as f:
            entries = json.load(f)["keys"]
        super().__init__(
            {name: torch.empty(shape, dtype=_DTYPES_BY_NAME[dtype], device="meta") for name, shape, dtype in entries},
            path=str(manifest_path),
        )
