"""`python -m flashface generate` in a process of its own, as a user runs it, with tiny seeded
models: reference photos to an image file, fp8 weights, two people, a missing model offline."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from cli_runs import PHOTOS, quick_flags, run_cli


def test_reference_photos_to_an_image_file(model_arguments, tmp_path):
    out = tmp_path / "portrait.png"
    refs = [arg for photo in PHOTOS for arg in ("--ref", str(photo))]
    done = run_cli(
        *refs,
        "--prompt",
        "an astronaut on the moon",
        "--out",
        str(out),
        *quick_flags(width=96, seed=3),
        *model_arguments,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "INFO device cpu (auto), UNet weights fp32 (auto)" in done.stderr.splitlines()  # no GPU here
    with Image.open(out) as image:
        assert image.size == (96, 64) and image.mode == "RGB"
        colours = image.getcolors(maxcolors=96 * 64)
    assert colours is None or len(colours) > 10  # a picture, not a flat fill


def test_fp8_weights_from_the_command_line(model_arguments, tmp_path):
    images = {}
    for dtype in ("fp32", "fp8_e4m3fn"):
        out = tmp_path / f"{dtype}.png"
        done = run_cli(
            "--ref",
            str(PHOTOS[0]),
            "--prompt",
            "a portrait",
            "--out",
            str(out),
            *quick_flags(seed=5),
            "--dtype",
            dtype,
            *model_arguments,
        )
        assert done.returncode == 0, done.stderr
        images[dtype] = np.asarray(Image.open(out), dtype=np.int32)
    difference = np.abs(images["fp8_e4m3fn"] - images["fp32"])
    assert 0 < difference.mean() < 40  # fp8's rounding of the weights: near, not equal


def test_two_people_from_the_command_line(model_arguments, tmp_path):
    out = tmp_path / "two.png"
    done = run_cli(
        "--person",
        f"{PHOTOS[0]}@0.05,0.2,0.35,0.5",
        "--person",
        f"{PHOTOS[1]}@0.6,0.2,0.9,0.5",
        "--prompt",
        "two astronauts",
        "--out",
        str(out),
        *quick_flags(width=96),
        *model_arguments,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (96, 64)


def test_missing_model_while_offline_says_what_to_do(tmp_path):
    env = {**os.environ, "FLASHFACE_OFFLINE": "1"}
    done = run_cli(
        "--ref",
        str(PHOTOS[0]),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o.png"),
        "--models-dir",
        str(tmp_path / "models"),
        env=env,
    )
    assert done.returncode == 1
    assert "flashface: error:" in done.stderr and "offline" in done.stderr.lower()
    assert "flashface.ckpt" in done.stderr and "Traceback" not in done.stderr
