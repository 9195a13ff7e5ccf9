"""Seeded RetinaFace-R50 checkpoints in the official `retinaface_resnet50.pth` key format.

The detector has one size only, so these are full-size (27M parameters, ~110 MB): random
weights, deterministic per seed. With random weights "faces" are arbitrary boxes, but their
scores are deterministic, so a test picks the threshold that yields exactly the number of faces
it wants (`post_nms_scores`, `threshold_for_count`). Files and loaded detectors are reused
within a test session (`session_detector`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from flashface.face import detect_faces
from flashface.models.retinaface import RetinaFace, load_face_detector
from seeded_weights import save_state_dict, seeded_state_dict

DEFAULT_WEIGHT_SCALE = 0.7

_detectors: dict[Path, RetinaFace] = {}


def retinaface_state_dict(seed: int = 0, weight_scale: float = DEFAULT_WEIGHT_SCALE) -> dict[str, torch.Tensor]:
    """Fan-in scaled conv weights times `weight_scale`; BatchNorm statistics near identity."""
    with torch.device("meta"):
        shapes = {k: t.shape for k, t in RetinaFace().state_dict().items()}
    return seeded_state_dict(shapes, seed, weight_scale=weight_scale)


def write_retinaface(path, seed: int = 0, weight_scale: float = DEFAULT_WEIGHT_SCALE) -> Path:
    """Write a seeded full-size RetinaFace-R50 checkpoint in the official naming."""
    return save_state_dict(retinaface_state_dict(seed, weight_scale), path)


def session_detector(
    tmp_path_factory, seed: int = 0, weight_scale: float = DEFAULT_WEIGHT_SCALE, suffix: str = ".pth"
) -> RetinaFace:
    """A loaded fp32 CPU detector from a seeded file, written and loaded once per test session."""
    path = tmp_path_factory.getbasetemp() / "retinaface" / f"seed{seed}_scale{weight_scale}{suffix}"
    if path not in _detectors:
        if not path.exists():
            write_retinaface(path, seed, weight_scale)
        _detectors[path] = load_face_detector(path)
    return _detectors[path]


def post_nms_scores(detector: RetinaFace, image: Image.Image) -> list[float]:
    """Scores of every face `detect_faces` would return at threshold 0, best first.

    Greedy NMS visits boxes best first, so at threshold t the result is exactly the faces here
    whose score exceeds t.
    """
    return [face.score for face in detect_faces(detector, image, 0.0, "cpu")]


def threshold_for_count(scores: list[float], count: int) -> float:
    """A threshold halfway between the scores that makes `detect_faces` return `count` faces."""
    upper = scores[count - 1] if count else 1.0
    lower = scores[count] if count < len(scores) else 0.0
    if not lower < upper:
        raise ValueError(f"no threshold gives exactly {count} faces: equal scores {lower}")
    return (upper + lower) / 2
