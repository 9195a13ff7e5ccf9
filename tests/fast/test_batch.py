"""`python -m flashface batch` in this process (no Ray) with tiny models: each job's images are
`generate`'s, bit for bit; a bad jobs file is refused line by line before anything runs; a failing job
is recorded and the others go on; the same command again resumes. The Ray runner is tested in
tests/slow/test_batch_ray.py."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from PIL import Image

from cli_runs import PHOTOS, quick_flags
from flashface.__main__ import main

QUICK = quick_flags(steps=2, seed=7)


def write_jobs(folder, jobs: list[dict | str]) -> str:
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(job if isinstance(job, str) else json.dumps(job) for job in jobs) + "\n")
    return str(path)


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def photos(tmp_path):
    """The example photos beside the jobs file, and a photo with no face."""
    for photo in PHOTOS:
        shutil.copy(photo, tmp_path / photo.name)
    Image.new("RGB", (200, 200), (120, 120, 120)).save(tmp_path / "blank.png")
    return [photo.name for photo in PHOTOS]


def test_each_job_draws_what_generate_draws_and_is_recorded(tmp_path, photos, model_arguments):
    jobs = write_jobs(
        tmp_path,
        [
            {"id": "one", "photos": photos, "prompt": "a portrait", "seed": 3},
            {"id": "two-samples", "photos": [photos[0]], "prompt": "a painting", "batch_size": 2, "solver": "euler"},
            {
                "id": "two_people",
                "people": [
                    {"photos": [photos[0]], "face_box": [0.05, 0.2, 0.35, 0.5]},
                    {"photos": [photos[1]], "face_box": [0.6, 0.2, 0.9, 0.5]},
                ],
                "prompt": "two astronauts",
                "width": 96,
            },
        ],
    )
    out = tmp_path / "out"
    assert main(["batch", jobs, "--out", str(out), *QUICK, *model_arguments]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "one.png",
        "two-samples_1.png",
        "two-samples_2.png",
        "two_people.png",
    ]
    records = {record["id"]: record for record in manifest(out)}
    assert {record["status"] for record in records.values()} == {"done"}
    assert records["two-samples"]["outputs"] == ["two-samples_1.png", "two-samples_2.png"]
    assert records["one"]["settings"]["seed"] == 3 and records["one"]["settings"]["steps"] == 2
    assert records["two_people"]["settings"]["width"] == 96 and records["one"]["worker"]
    single = tmp_path / "generate.png"
    refs = [arg for name in photos for arg in ("--ref", str(tmp_path / name))]
    flags = [*QUICK[:-1], "3", *model_arguments]  # the first job's seed
    assert main(["generate", *refs, "--prompt", "a portrait", "--out", str(single), *flags]) == 0
    assert (out / "one.png").read_bytes() == single.read_bytes()
    person = [
        "--person",
        f"{tmp_path / photos[0]}@0.05,0.2,0.35,0.5",
        "--person",
        f"{tmp_path / photos[1]}@0.6,0.2,0.9,0.5",
    ]
    people_flags = [*QUICK, "--width", "96", *model_arguments]
    assert main(["generate", *person, "--prompt", "two astronauts", "--out", str(single), *people_flags]) == 0
    assert (out / "two_people.png").read_bytes() == single.read_bytes()


def test_a_bad_jobs_file_is_refused_line_by_line_before_anything_runs(tmp_path, capsys):
    jobs = write_jobs(
        tmp_path,
        [
            {"id": "a", "photos": ["x.jpg"], "prompt": "p", "colour": "red"},
            {"id": "b", "photos": ["x.jpg"], "prompt": "p", "steps": 0},
            {"id": "a", "photos": ["x.jpg"], "prompt": "p"},
            "{not json",
            {"id": "../up", "photos": ["x.jpg"], "prompt": "p"},
            {"id": "c", "photos": ["x.jpg"]},
            {"id": "d", "people": [{"photos": ["x.jpg"]}], "prompt": "p"},
            {"id": "e", "photos": ["x.jpg"], "prompt": "p", "width": 100},
        ],
    )
    out = tmp_path / "out"
    assert main(["batch", jobs, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    for expected in (
        "8 problem(s); nothing was run",
        "line 1: unknown key 'colour'",
        "line 2: steps must be a whole number at least 1",
        "line 3: the id 'a' is also the id of line 1",
        "line 4: not JSON",
        "line 5: id must be text usable as a file name",
        "line 6: prompt (required)",
        "line 7: give each person a face_box or a face_mask",
        "line 8: The image width must be a positive multiple of 8",
    ):
        assert expected in error, (expected, error)
    assert not out.exists()


def test_a_failing_job_is_recorded_the_others_go_on_and_the_same_command_resumes(
    tmp_path, photos, model_arguments, capsys
):
    jobs = write_jobs(
        tmp_path,
        [
            {"id": "good", "photos": [photos[0]], "prompt": "p"},
            {"id": "missing", "photos": ["not_there.jpg"], "prompt": "p"},
            {"id": "faceless", "photos": ["blank.png"], "prompt": "p"},
            {"id": "also_good", "photos": [photos[1]], "prompt": "p"},
        ],
    )
    out = tmp_path / "out"
    command = ["batch", jobs, "--out", str(out), *QUICK, *model_arguments]
    assert main(command) == 1
    printed = capsys.readouterr().out
    assert "2 done, 2 failed, 0 skipped" in printed
    records = {record["id"]: record for record in manifest(out)}
    assert records["missing"]["status"] == "failed" and "not_there.jpg" in records["missing"]["error"]
    assert records["faceless"]["status"] == "failed" and "No face found in photo 1 of 1" in records["faceless"]["error"]
    assert records["good"]["status"] == records["also_good"]["status"] == "done"
    good = (out / "good.png").stat().st_mtime_ns

    shutil.copy(tmp_path / photos[0], tmp_path / "not_there.jpg")  # the missing photo is put in place
    assert main(command) == 1  # faceless fails again; good and also_good are not run again
    assert "1 done, 1 failed, 2 skipped" in capsys.readouterr().out
    assert (out / "good.png").stat().st_mtime_ns == good and (out / "missing.png").is_file()
    assert main([*command, "--overwrite"]) == 1
    assert "3 done, 1 failed, 0 skipped" in capsys.readouterr().out
    assert [record["id"] for record in manifest(out)].count("good") == 2


def test_workers_without_ray_say_how_to_install_it(tmp_path, photos, monkeypatch, capsys):
    jobs = write_jobs(tmp_path, [{"id": "a", "photos": [photos[0]], "prompt": "p"}])
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray fails, as where it is not installed
    assert main(["batch", jobs, "--out", str(tmp_path / "out"), "--workers", "2"]) == 1
    assert 'pip install "ray[data]"' in capsys.readouterr().err
