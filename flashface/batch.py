"""``python -m flashface batch JOBS.jsonl --out DIR``: many generations from one job list, in this
process or on Ray workers (`batch_ray`), with a manifest and resume.

A job is one JSON object per line: ``id`` (unique, a file name's stem), ``photos`` (paths, relative
to the jobs file's folder or absolute) or ``people`` (``[{"photos": [...], "face_box": [x1, y1,
x2, y2]} | {"photos": [...], "face_mask": PATH}, ...]``), ``prompt``, optional ``negative_prompt``,
``preset``, and any generation setting by its name (`GenerationSettings`, the Generator node's
names). The command line's settings are every job's defaults; a job's ``preset`` comes next, then
its own settings. The whole file is checked before anything runs.

Each job writes ``DIR/<id>.png`` (``<id>_1.png`` ... with ``batch_size`` > 1, as ``generate``
names them), each file atomically, then a line in ``DIR/manifest.jsonl`` (`JobResult.record`). The
same command again skips the jobs whose outputs and ``done`` line exist and runs the failed ones
again; ``--overwrite`` redoes everything. A job is rendered by `runs.render`, as ``generate``
renders it, from the bytes of its files: what a worker on another machine gets.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import FlashFaceError, InvalidInputError
from .pipeline import FlashFacePipeline
from .runs import FaceOptions, PersonPhotos, read_image, read_mask, render
from .sampling.mask import check_face_box, latent_size
from .settings import GenerationSettings
from .utils.memory import is_out_of_memory

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SETTINGS = tuple(item.name for item in dataclasses.fields(GenerationSettings))
JOB_KEYS = ("id", "photos", "people", "prompt", "negative_prompt", "preset", *SETTINGS)
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class PersonFiles:
    """One person of a job: their photo files and their place (a face box or a mask file; neither
    for a job's one person given as ``photos``: the settings' face box)."""

    photos: tuple[Path, ...]
    face_box: tuple[float, float, float, float] | None = None
    face_mask: Path | None = None


@dataclass(frozen=True)
class Job:
    id: str
    line: int
    people: tuple[PersonFiles, ...]
    prompt: str
    negative_prompt: str
    settings: GenerationSettings

    def outputs(self) -> list[str]:
        """The file names of its images, as ``generate --out <id>.png`` names them."""
        if self.settings.batch_size == 1:
            return [f"{self.id}.png"]
        return [f"{self.id}_{number}.png" for number in range(1, self.settings.batch_size + 1)]

    def files(self) -> list[Path]:
        """Every file the job reads, in order: each person's photos, then their mask."""
        return [path for person in self.people for path in (*person.photos, *filter(None, [person.face_mask]))]

    def payload(self) -> dict:
        """The job as plain values (files by name), for a worker that gets the files as bytes."""
        return dict(
            id=self.id,
            people=[
                dict(
                    photos=[p.name for p in person.photos],
                    face_box=person.face_box,
                    face_mask=person.face_mask and person.face_mask.name,
                )
                for person in self.people
            ],
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            settings=dataclasses.asdict(self.settings),
        )


@dataclass
class JobResult:
    """What a run of one job gives: PNG bytes of its images, or the message of its failure."""

    id: str
    status: str
    images: list[bytes] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    worker: str = ""

    def record(self, job: Job, outputs: list[str]) -> dict:
        """Its manifest line."""
        return dict(
            id=self.id,
            status=self.status,
            outputs=outputs,
            error=self.error,
            settings=dataclasses.asdict(job.settings),
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            seconds=round(self.seconds, 3),
            worker=self.worker,
        )


def _person(entry, line: int, folder: Path, problems: list[str]) -> PersonFiles | None:
    if not isinstance(entry, dict) or not set(entry) <= {"photos", "face_box", "face_mask"}:
        problems.append(f"line {line}: each person is an object with photos and a face_box or a face_mask")
        return None
    photos = _paths(entry.get("photos"), line, folder, problems)
    if ("face_box" in entry) == ("face_mask" in entry):
        problems.append(f"line {line}: give each person a face_box or a face_mask (one of the two)")
        return None
    box, mask = None, None
    if "face_box" in entry:
        try:
            box = check_face_box(entry["face_box"])
        except (InvalidInputError, TypeError, ValueError):
            problems.append(f"line {line}: face_box must be four numbers x1, y1, x2, y2 between 0 and 1")
            return None
    elif isinstance(entry["face_mask"], str):
        mask = folder / entry["face_mask"]
    else:
        problems.append(f"line {line}: face_mask must be the path of a mask image")
        return None
    return PersonFiles(photos, box, mask) if photos else None


def _paths(value, line: int, folder: Path, problems: list[str]) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        problems.append(f"line {line}: photos must be a list of one or more photo paths")
        return ()
    return tuple(folder / p for p in value)


def _job(entry: dict, line: int, folder: Path, defaults: GenerationSettings, problems: list[str]) -> Job | None:
    unknown = sorted(set(entry) - set(JOB_KEYS))
    if unknown:
        problems.append(
            f"line {line}: unknown key {', '.join(map(repr, unknown))}; a job takes id, photos or people, prompt, "
            f"negative_prompt, preset and the settings {', '.join(SETTINGS)}"
        )
        return None
    job_id = entry.get("id")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        problems.append(f"line {line}: id must be text usable as a file name (letters, digits, . _ -), got {job_id!r}")
        return None
    prompt, negative = entry.get("prompt"), entry.get("negative_prompt", "")
    if not isinstance(prompt, str) or not isinstance(negative, str):
        problems.append(f"line {line}: prompt (required) and negative_prompt must be text")
        return None
    if ("photos" in entry) == ("people" in entry):
        problems.append(f"line {line}: give photos (one person) or people (several), one of the two")
        return None
    if "photos" in entry:
        photos = _paths(entry["photos"], line, folder, problems)
        people = (PersonFiles(photos),) if photos else ()
    elif isinstance(entry["people"], list) and entry["people"]:
        people = tuple(filter(None, (_person(person, line, folder, problems) for person in entry["people"])))
        if len(people) != len(entry["people"]):
            return None
    else:
        problems.append(f"line {line}: people must be a list of one or more people")
        return None
    try:
        settings = defaults.with_preset(entry["preset"]) if "preset" in entry else defaults
        given = {
            key: tuple(value) if key == "face_box" and isinstance(value, list) else value
            for key, value in entry.items()
            if key in SETTINGS
        }
        settings = dataclasses.replace(settings, **given)
        latent_size(settings.width, settings.height)
    except (InvalidInputError, TypeError) as error:
        problems.append(f"line {line}: {error}")
        return None
    return Job(job_id, line, people, prompt, negative, settings) if people else None


def read_jobs(path: Path, defaults: GenerationSettings) -> list[Job]:
    """Every job of a jobs file, all checked first: one InvalidInputError listing each problem with its line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read the jobs file {path}: {error}.") from error
    problems: list[str] = []
    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(f"line {number}: not JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(entry, dict):
            problems.append(f"line {number}: a job is a JSON object, got {type(entry).__name__}")
            continue
        given_id = entry.get("id")
        if isinstance(given_id, str) and given_id in first_line:
            problems.append(f"line {number}: the id {given_id!r} is also the id of line {first_line[given_id]}")
            continue
        if isinstance(given_id, str):
            first_line[given_id] = number
        job = _job(entry, number, Path(path).parent, defaults, problems)
        if job is not None:
            jobs.append(job)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InvalidInputError(f"The jobs file {path} has {len(problems)} problem(s); nothing was run:\n  {shown}")
    if not jobs:
        raise InvalidInputError(f"The jobs file {path} holds no job: one JSON object per line.")
    return jobs


def job_files(job: Job) -> list[bytes]:
    """The bytes of every file the job reads (`Job.files`); a missing one fails the job."""
    contents = []
    for path in job.files():
        try:
            contents.append(path.read_bytes())
        except OSError as error:
            raise InvalidInputError(f"Cannot read {path}: {error.strerror or error}.") from error
    return contents


def _people(payload: dict, files: list[bytes]) -> list[PersonPhotos]:
    contents = iter(files)
    people = []
    for person in payload["people"]:
        photos = tuple(read_image(next(contents), "reference photo", name) for name in person["photos"])
        mask = read_mask(next(contents), person["face_mask"]) if person["face_mask"] else None
        box = tuple(person["face_box"]) if person["face_box"] is not None else None
        people.append(PersonPhotos(photos, box, mask))  # pyright: ignore[reportArgumentType]
    return people


def worker_name() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def execute(
    pipeline: FlashFacePipeline, payload: dict, files: list[bytes], faces: FaceOptions, worker: str
) -> JobResult:
    """One job on a loaded pipeline: its images as PNG bytes, or the failure's message (a user's
    mistake, no face, out of memory); never raises for a job's own problem."""
    started = time.perf_counter()
    try:
        settings = GenerationSettings(**{**payload["settings"], "face_box": tuple(payload["settings"]["face_box"])})
        images = render(
            pipeline, _people(payload, files), payload["prompt"], payload["negative_prompt"], settings, faces
        )
    except Exception as error:  # noqa: BLE001 - a job's failure is recorded, the others go on
        if not isinstance(error, FlashFaceError) and not is_out_of_memory(error):
            logger.exception("job %s failed", payload["id"])
        message = str(error) if isinstance(error, FlashFaceError) else f"{type(error).__name__}: {error}"
        return JobResult(payload["id"], FAILED, error=message, seconds=time.perf_counter() - started, worker=worker)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return JobResult(payload["id"], DONE, encoded, seconds=time.perf_counter() - started, worker=worker)


def finished(out: Path) -> dict[str, dict]:
    """The last manifest line of each job id in `out` (none if there is no manifest yet)."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    last = {}
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            last[record["id"]] = record
    return last


def to_run(jobs: list[Job], out: Path, overwrite: bool) -> list[Job]:
    """The jobs still to run: all with `overwrite`, else those without a ``done`` line and their files."""
    if overwrite:
        return list(jobs)
    done = finished(out)
    return [
        job
        for job in jobs
        if not (done.get(job.id, {}).get("status") == DONE and all((out / name).is_file() for name in job.outputs()))
    ]


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.done} done, {self.failed} failed, {self.skipped} skipped (done before) in {self.seconds:.1f} s"


Runner = Callable[[list[Job]], Iterator[JobResult]]


class Batch:
    """The driver: runs the jobs through a runner (this process or Ray), writing each job's images
    and manifest line as its result arrives, with one progress bar over the jobs."""

    def __init__(self, jobs: list[Job], out: Path, overwrite: bool = False):
        self.jobs, self.out = jobs, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pending = to_run(jobs, self.out, overwrite)
        self.summary = Summary(skipped=len(jobs) - len(self.pending))

    def record(self, job: Job, result: JobResult) -> None:
        names = job.outputs() if result.status == DONE else []
        if result.status == DONE and len(result.images) != len(names):
            result = dataclasses.replace(
                result, status=FAILED, images=[], error=f"{len(result.images)} image(s) for {len(names)} output(s)"
            )
            names = []
        for name, data in zip(names, result.images):
            _write_atomically(self.out / name, data)
        with open(self.out / MANIFEST, "a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(result.record(job, names)) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        if result.status == DONE:
            self.summary.done += 1
            logger.debug("job %s done in %.1f s on %s", job.id, result.seconds, result.worker)
        else:
            self.summary.failed += 1
            logger.warning("job %s (line %d) failed: %s", job.id, job.line, result.error)

    def run(self, runner: Runner) -> Summary:
        started = time.perf_counter()
        by_id = {job.id: job for job in self.pending}
        with tqdm(total=len(self.pending), unit="job", desc="jobs", disable=None) as bar:
            for result in runner(self.pending):
                self.record(by_id.pop(result.id), result)
                bar.set_postfix(done=self.summary.done, failed=self.summary.failed)
                bar.update(1)
        for job in by_id.values():  # a runner that could not finish a job (its worker kept dying)
            self.record(job, JobResult(job.id, FAILED, error="no result came back for this job (its worker died)"))
        self.summary.seconds = time.perf_counter() - started
        return self.summary


def run_here(load: Callable[[], FlashFacePipeline], faces: FaceOptions) -> Runner:
    """The runner of this process: one pipeline, loaded when the first job comes, the jobs in order."""

    def runner(jobs: list[Job]) -> Iterator[JobResult]:
        if not jobs:
            return
        pipeline = load()
        worker = f"{worker_name()} {pipeline.device}"
        for job in jobs:
            try:
                files = job_files(job)
            except InvalidInputError as error:
                yield JobResult(job.id, FAILED, error=str(error), worker=worker)
                continue
            yield execute(pipeline, job.payload(), files, faces, worker)

    return runner
