"""`python -m flashface generate` in this process (its `main`) with tiny seeded models: reference
photos in, image files out; and the errors a user meets (unreadable photo, no face, bad size, flags
that cannot be used). The runs in a process of their own are in tests/slow/test_cli_processes.py."""

from __future__ import annotations

import pytest
from PIL import Image

from cli_runs import PHOTOS, quick_flags
from flashface.__main__ import main


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
        ("no_face", "No face found in photo 1"),
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
        arguments[arguments.index("--detection-threshold") + 1] = "0.99"
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


def test_an_old_torch_is_one_line_saying_what_to_do(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch, "__version__", "2.3.1")
    assert main(["generate", "--ref", "a.jpg", "--prompt", "x", "--out", "o.png"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("flashface: error: FlashFace needs torch 2.4 or later") and "2.3.1" in error
