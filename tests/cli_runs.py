"""The command line's test runs: the example photos, the tiny models as flags, a quick run's flags,
and `python -m flashface` in a process of its own."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from comfy_installs import REPO_ROOT
from flashface.models.retinaface import load_face_detector
from tiny_retinaface import post_nms_scores, threshold_for_count

PHOTOS = [
    REPO_ROOT / "workflows" / "input" / name for name in ("flashface_astronaut.jpg", "flashface_astronaut_closeup.jpg")
]


def model_flags(tiny_model_files: dict) -> list[str]:
    """The flags that give the command line the tiny models, with one detection threshold that finds
    at least one face in each example photo (extra faces: the largest is used)."""
    detector = load_face_detector(tiny_model_files["detector_name"])
    thresholds = [threshold_for_count(post_nms_scores(detector, Image.open(p).convert("RGB")), 1) for p in PHOTOS]
    return [
        "--unet",
        str(tiny_model_files["unet_name"]),
        "--vae",
        str(tiny_model_files["vae_name"]),
        "--text-encoder",
        str(tiny_model_files["clip_name"]),
        "--detector",
        str(tiny_model_files["detector_name"]),
        "--detection-threshold",
        f"{min(thresholds):.6f}",
    ]


def quick_flags(steps: int = 2, width: int = 64, height: int = 64, seed: int | None = None) -> list[str]:
    """The flags of a quick run of the tiny models."""
    flags = ["--steps", str(steps), "--width", str(width), "--height", str(height)]
    return flags if seed is None else [*flags, "--seed", str(seed)]


def run_cli(*arguments: str, command: str = "generate", env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m flashface COMMAND ARGUMENTS...` in a fresh process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "flashface", command, *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
