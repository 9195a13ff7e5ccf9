"""Verified model files on disk (the download cache): checking what is there, downloading what is missing.

Checking (`verify_file`): a file is accepted when its size, checksums and format match what is
expected of it (`ExpectedFile`). Hashing a 10 GB file takes a minute, so the digests and the
verdict are cached in a small sidecar next to the file (``<file>.flashface-check.json``) keyed
by size and modification time; a warm start only ``stat``s the file and reads the sidecar. A file
whose size or mtime changed is checked again.

Downloading (`download_file`): one process at a time per file (a lock file next to the target;
a second process waits and then uses the result), transferred and checked by `http_download`,
then renamed into place: a half-written or unchecked file is never at the final path. A corrupt
file found at the target is moved aside (``<file>.corrupt``) and deleted only once its
replacement is verified. ``FLASHFACE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid any network access.

The module is the download layer; it keeps the name ``cache_utils`` because the product's layout
(and code outside this repository that imports it) fixes that name.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import DownloadError, ModelFileError
from .checksums import ExpectedFile, ProgressCallback, hash_file, mismatches, pinned_checks
from .http_download import (
    PART_SUFFIX,
    DownloadSettings,
    VerifiedPart,
    download_to_part,
    manual_install_hint,
    source_urls,
)

__all__ = [  # the cache's interface; ExpectedFile and DownloadSettings are defined where they are used
    "CORRUPT_SUFFIX",
    "PART_SUFFIX",
    "SIDECAR_SUFFIX",
    "DownloadSettings",
    "ExpectedFile",
    "FileRecord",
    "ProgressCallback",
    "download_file",
    "hash_file",
    "manual_install_hint",
    "network_disabled",
    "read_record",
    "record_unusable",
    "recorded_load_failure",
    "source_urls",
    "verify_file",
]

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".flashface-check.json"
LOCK_SUFFIX = ".lock"
CORRUPT_SUFFIX = ".corrupt"


@dataclass(frozen=True)
class FileRecord:
    """The sidecar: digests of a file as it was when `size` and `mtime_ns` were read, and the verdict."""

    size: int
    mtime_ns: int
    md5: str
    sha256: str
    verified: bool
    checks: tuple[str, ...] = ()
    source: str | None = None
    problem: str | None = None
    """Why the file was rejected (size, checksum, format, or a failed load), for a record that is not verified."""

    @property
    def is_reference(self) -> bool:
        """Verified against a checksum (a checked download): the reference for files without a pinned one."""
        return self.verified and any(check != "size" for check in self.checks)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def network_disabled() -> bool:
    """True when FLASHFACE_OFFLINE or HF_HUB_OFFLINE asks for no network access at all."""
    return _env_flag("FLASHFACE_OFFLINE") or _env_flag("HF_HUB_OFFLINE")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_record(path: Path) -> FileRecord | None:
    try:
        fields = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return FileRecord(**{**fields, "checks": tuple(fields.get("checks", ()))})
    except (OSError, ValueError, TypeError):
        return None


def _write_record(path: Path, record: FileRecord) -> None:
    """Best effort: a folder we cannot write to only costs a re-hash at the next start."""
    sidecar = sidecar_path(path)
    try:
        temporary = sidecar.with_name(sidecar.name + ".tmp")
        temporary.write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
        os.replace(temporary, sidecar)
    except OSError as exc:
        logger.warning(
            "Could not record the check of %s in %s (%s); it will be hashed again next time", path, sidecar, exc
        )


def verify_file(path: Path, expected: ExpectedFile, progress: ProgressCallback | None = None) -> str | None:
    """Check a file on disk; None if it is good, else what is wrong with it.

    The references are the expected size and checksums, the file's format and, for a file
    verified by a checked download earlier, the digests recorded then: a file that changed since
    is rejected. A file with nothing but a pinned size to compare with (placed by hand) is
    accepted on its exact size and format. Verdicts are cached in the sidecar (keyed by size and
    modification time), rejections with their reason, so an unchanged file is never hashed twice.
    """
    stat = path.stat()
    if expected.size is not None and stat.st_size != expected.size:
        return f"size is {stat.st_size} bytes, expected {expected.size}"
    record = read_record(path)
    # the record of this very file (same size and modification time), else None
    current = (
        record if record is not None and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns) else None
    )
    if current is not None and not current.verified and current.problem:
        return current.problem
    if current is not None:
        md5, sha256 = current.md5, current.sha256
    else:
        logger.info(
            "Checking %s (%.2f GB) once; the result is kept in %s", path, stat.st_size / 1e9, sidecar_path(path).name
        )
        md5, sha256 = hash_file(path, progress=progress)
    problems = mismatches(expected, stat.st_size, md5, sha256)
    checks = pinned_checks(expected)
    if record is not None and record.is_reference and not expected.has_checksum:
        if changes := mismatches(ExpectedFile(md5=record.md5, sha256=record.sha256), stat.st_size, md5, sha256):
            problems.append(f"its content changed since it was verified ({'; '.join(changes)})")
        checks = list(record.checks)
    elif not expected.has_checksum and not problems:
        logger.warning("%s has no published checksum to compare with; accepted on its exact size", path)
    if (
        not problems
        and current is None
        and expected.format_problem is not None
        and (format_problem := expected.format_problem(path))
    ):
        problems.append(format_problem)
    verified, problem = not problems, "; ".join(problems) or None
    # A checked download's record is the reference for files without a pinned checksum: a
    # rejection of a later copy must not replace it (the copy is checked again next time).
    keeps_reference = record is not None and record.is_reference and not verified and not expected.has_checksum
    unchanged = current is not None and (current.verified, current.problem) == (verified, problem)
    if not unchanged and not keeps_reference:
        _write_record(
            path,
            FileRecord(
                stat.st_size,
                stat.st_mtime_ns,
                md5,
                sha256,
                verified,
                tuple(checks),
                record.source if record is not None else None,
                problem,
            ),
        )
    return problem


@contextmanager
def recorded_load_failure(path: Path) -> Iterator[None]:
    """Run a load of `path`: a ModelFileError from it is kept in the file's sidecar (if it has one,
    i.e. it is a registry file), so the file is not called verified again (`record_unusable`)."""
    try:
        yield
    except ModelFileError as error:
        record_unusable(path, str(error))
        raise


def record_unusable(path: Path, problem: str) -> None:
    """Remember that a file that passed its checks cannot be used (it failed to load), so it is
    never reported as verified again until it changes."""
    try:
        stat = path.stat()
    except OSError:
        return
    record = read_record(path)
    if record is not None and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        _write_record(
            path,
            FileRecord(
                record.size, record.mtime_ns, record.md5, record.sha256, False, record.checks, record.source, problem
            ),
        )


def _first_writable(directories: Sequence[Path], file_name: str, urls: Sequence[str]) -> Path:
    failures = []
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                return directory
        except OSError as exc:
            failures.append(f"{directory}: {exc.strerror or exc}")
    raise DownloadError(
        f"Cannot save {file_name}: no model folder is writable ({'; '.join(failures)}). Make the folder writable, "
        f"or give FlashFace another one (a 'flashface:' line in ComfyUI's extra_model_paths.yaml, or "
        f"FLASHFACE_MODELS_DIR outside ComfyUI). {manual_install_hint(urls, directories[0] / file_name)}."
    )


def _aside_path(path: Path) -> Path:
    return path.with_name(path.name + CORRUPT_SUFFIX)


def _move_aside(path: Path) -> None:
    aside = _aside_path(path)
    os.replace(path, aside)
    logger.warning("Moved the bad copy of %s aside to %s until a good one is in place", path.name, aside)


def _wait_for_lock(lock: FileLock, target: Path, timeout: float | None) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        logger.info("Another process is downloading %s; waiting for it to finish", target.name)
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except Timeout as exc:
        raise DownloadError(
            f"Another process has been downloading {target.name} for more than {timeout:.0f} s "
            f"(lock {lock.lock_file}). Wait for it, or stop it and run again."
        ) from exc


def download_file(
    urls: Sequence[str],
    directories: Sequence[Path],
    file_name: str,
    expected: ExpectedFile,
    *,
    progress: ProgressCallback | None = None,
    settings: DownloadSettings | None = None,
) -> Path:
    """Download `file_name` into the first writable of `directories` and return its verified path.

    `urls` are tried in order (after the environment overrides). If another process holds the
    download lock, wait for it and return its result. Raises DownloadError (offline, HTTP
    401/403/404, checksum mismatch after retries, disk full, no writable folder), always naming
    the file, the URL and the path to put the file at by hand.
    """
    settings = settings or DownloadSettings()
    urls = source_urls(urls, file_name)
    if network_disabled():
        raise DownloadError(
            f"{file_name} was not downloaded: FlashFace is offline (FLASHFACE_OFFLINE or HF_HUB_OFFLINE is set). "
            f"{manual_install_hint(urls, Path(directories[0]) / file_name)}, or unset the variable to let FlashFace "
            f"download it."
        )
    directory = _first_writable([Path(d) for d in directories], file_name, urls)
    target = directory / file_name
    lock = FileLock(str(target) + LOCK_SUFFIX)
    _wait_for_lock(lock, target, settings.lock_timeout)
    try:
        if target.exists():
            problem = verify_file(target, expected, progress)
            if problem is None:
                return target
            logger.warning("%s is not the expected file (%s); downloading it again", target, problem)
            _move_aside(target)
        _download_verified(urls, target, expected, settings, progress)
        _aside_path(target).unlink(missing_ok=True)
        return target
    finally:
        lock.release()


def _download_verified(
    urls: list[str], target: Path, expected: ExpectedFile, settings: DownloadSettings, progress: ProgressCallback | None
) -> None:
    outcome = download_to_part(urls, target, expected, settings, progress)
    if isinstance(outcome, VerifiedPart):
        os.replace(outcome.path, target)  # atomic: the final path only ever holds a checked file
        stat = target.stat()
        _write_record(
            target,
            FileRecord(
                stat.st_size, stat.st_mtime_ns, outcome.md5, outcome.sha256, True, outcome.checks, outcome.source
            ),
        )
        logger.info("Downloaded %s (MD5 %s, verified: %s)", target, outcome.md5, ", ".join(outcome.checks))
        return
    aside = _aside_path(target)
    kept = f" The earlier, bad copy is kept as {aside}; delete it once you have a good one." if aside.exists() else ""
    raise DownloadError(
        f"Could not download {target.name}:\n  "
        + "\n  ".join(outcome)
        + f"\n{manual_install_hint(urls, target)}; it is checked at the next start.{kept}"
    )
