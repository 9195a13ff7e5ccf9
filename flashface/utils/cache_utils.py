"""Verified model files on disk: checking what is there, and downloading what is missing.

Checking: a file is accepted when its size and checksums match what is expected of it. Hashing a
10 GB file takes a minute, so the digests are cached in a small sidecar next to the file
(``<file>.flashface-check.json``) keyed by size and modification time; a warm start only
``stat``s the file and reads the sidecar. A file whose size or mtime changed is hashed again.

Downloading (`download_file`): one process at a time per file (a lock file next to the target;
a second process waits and then uses the result), streamed into ``<file>.part`` next to the
target with a tqdm bar and a progress callback, resumed with an HTTP Range request after a broken
connection, retried with exponential backoff on transient errors (connection reset, timeout,
HTTP 429/5xx), then checked (size, pinned MD5/SHA-256, and the SHA-256 that Hugging Face
publishes for LFS files) before an atomic rename. A download with no checksum to verify it
against is refused. A corrupt file found at the target is moved aside (``<file>.corrupt``) and
deleted only once its replacement is verified.

Environment: ``FLASHFACE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid any network access;
``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) is sent to Hugging Face hosts only;
``HF_ENDPOINT`` replaces ``https://huggingface.co`` in every URL (e.g. a regional mirror);
``FLASHFACE_MIRROR`` is a URL prefix tried first as ``<prefix>/<file name>``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import requests
from filelock import FileLock, Timeout
from tqdm import tqdm

from ..errors import DownloadError, ModelFileError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, "int | None"], None]
"""Called with (bytes done, bytes in total or None when unknown)."""

HF_HOSTS = ("huggingface.co", "hf.co")
HUGGING_FACE = "https://huggingface.co"
SIDECAR_SUFFIX = ".flashface-check.json"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
CORRUPT_SUFFIX = ".corrupt"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_PROGRESS_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class DownloadSettings:
    """Timeouts, retries and buffer sizes (tests shrink them)."""

    connect_timeout: float = 20.0
    read_timeout: float = 60.0
    attempts_per_url: int = 6
    """Consecutive transient failures without any new byte before a URL is given up."""
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 60.0
    checksum_attempts: int = 2
    """Complete downloads per URL whose checksum may fail before the URL is given up."""
    chunk_bytes: int = 1 << 20
    lock_timeout: float | None = None
    """Seconds to wait for another process downloading the same file; None waits as long as it takes."""


@dataclass(frozen=True)
class ExpectedFile:
    """What a file must be: any of exact size, MD5, SHA-256 (lowercase hex), and readable in its
    format (`format_problem(path)` says what is wrong, or None; it runs when the file is hashed)."""

    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    format_problem: Callable[[Path], "str | None"] | None = None

    @property
    def has_checksum(self) -> bool:
        return bool(self.md5 or self.sha256)


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


def source_urls(urls: Sequence[str], file_name: str) -> list[str]:
    """The URLs to try, in order, after the FLASHFACE_MIRROR and HF_ENDPOINT overrides."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    rewritten = [endpoint + url[len(HUGGING_FACE):] if endpoint and url.startswith(HUGGING_FACE + "/") else url
                 for url in urls]
    mirror = os.environ.get("FLASHFACE_MIRROR", "").rstrip("/")
    return ([f"{mirror}/{file_name}"] if mirror else []) + rewritten


def _is_hugging_face(url: str) -> bool:
    host = urlparse(url).hostname or ""
    endpoint_host = urlparse(os.environ.get("HF_ENDPOINT", "")).hostname
    return host in HF_HOSTS or host.endswith(".huggingface.co") or (endpoint_host is not None and host == endpoint_host)


def _hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def manual_install_hint(urls: Sequence[str], target: Path) -> str:
    mirrors = f" (or from {', '.join(urls[1:])})" if len(urls) > 1 else ""
    return f"To install it by hand, download {urls[0]}{mirrors} and save it as {target}"


class _Progress:
    """A tqdm bar plus the caller's callback, throttled to a few updates per second."""

    def __init__(self, description: str, total: int | None, done: int, callback: ProgressCallback | None):
        self.total, self.done, self._callback = total, done, callback
        self._bar = tqdm(desc=description, total=total, initial=done, unit="B", unit_scale=True,
                         unit_divisor=1024, disable=None, leave=False)
        self._last_report = 0.0

    def set_total(self, total: int | None, done: int) -> None:
        self.total, self.done = total, done
        self._bar.reset(total=total)
        self._bar.update(done)

    def advance(self, count: int) -> None:
        self.done += count
        self._bar.update(count)
        now = time.monotonic()
        if self._callback is not None and now - self._last_report >= _PROGRESS_INTERVAL_SECONDS:
            self._last_report = now
            self._callback(self.done, self.total)

    def close(self) -> None:
        self._bar.close()
        if self._callback is not None:
            self._callback(self.done, self.total)


class _Hashes:
    """MD5 and SHA-256 of a byte stream, computed together."""

    def __init__(self):
        self.md5, self.sha256, self.size = hashlib.md5(), hashlib.sha256(), 0

    def update(self, data: bytes | memoryview) -> None:
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def add_file(self, path: Path, chunk_bytes: int, progress: _Progress | None = None) -> None:
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                self.update(view[:count])
                if progress is not None:
                    progress.advance(count)


def hash_file(path: Path, chunk_bytes: int = 1 << 20, progress: ProgressCallback | None = None) -> tuple[str, str]:
    """(MD5, SHA-256) of a file, read once."""
    hashes = _Hashes()
    bar = _Progress(f"checking {path.name}", path.stat().st_size, 0, progress)
    try:
        hashes.add_file(path, chunk_bytes, bar)
    finally:
        bar.close()
    return hashes.md5.hexdigest(), hashes.sha256.hexdigest()


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
        logger.warning("Could not record the check of %s in %s (%s); it will be hashed again next time",
                       path, sidecar, exc)


def _mismatches(expected: ExpectedFile, size: int, md5: str, sha256: str) -> list[str]:
    problems = []
    if expected.size is not None and size != expected.size:
        problems.append(f"size is {size} bytes, expected {expected.size}")
    if expected.md5 and md5 != expected.md5:
        problems.append(f"MD5 is {md5}, expected {expected.md5}")
    if expected.sha256 and sha256 != expected.sha256:
        problems.append(f"SHA-256 is {sha256}, expected {expected.sha256}")
    return problems


def _pinned_checks(expected: ExpectedFile) -> list[str]:
    """Names of the checks `_mismatches` makes, for the record."""
    checks = ["size"] if expected.size is not None else []
    return checks + [f"{name} pinned in the registry"
                     for name, value in (("MD5", expected.md5), ("SHA-256", expected.sha256)) if value]


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
    current = record is not None and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    if current and not record.verified and record.problem:
        return record.problem
    if current:
        md5, sha256 = record.md5, record.sha256
    else:
        logger.info("Checking %s (%.2f GB) once; the result is kept in %s",
                    path, stat.st_size / 1e9, sidecar_path(path).name)
        md5, sha256 = hash_file(path, progress=progress)
    problems = _mismatches(expected, stat.st_size, md5, sha256)
    checks = _pinned_checks(expected)
    if record is not None and record.is_reference and not expected.has_checksum:
        if changes := _mismatches(ExpectedFile(md5=record.md5, sha256=record.sha256), stat.st_size, md5, sha256):
            problems.append(f"its content changed since it was verified ({'; '.join(changes)})")
        checks = list(record.checks)
    elif not expected.has_checksum and not problems:
        logger.warning("%s has no published checksum to compare with; accepted on its exact size", path)
    if not problems and not current and expected.format_problem is not None:
        if format_problem := expected.format_problem(path):
            problems.append(format_problem)
    verified, problem = not problems, "; ".join(problems) or None
    # A checked download's record is the reference for files without a pinned checksum: a
    # rejection of a later copy must not replace it (the copy is checked again next time).
    keeps_reference = record is not None and record.is_reference and not verified and not expected.has_checksum
    unchanged = current and (record.verified, record.problem) == (verified, problem)
    if not unchanged and not keeps_reference:
        _write_record(path, FileRecord(stat.st_size, stat.st_mtime_ns, md5, sha256, verified, tuple(checks),
                                       record.source if record is not None else None, problem))
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
        _write_record(path, FileRecord(record.size, record.mtime_ns, record.md5, record.sha256, False, record.checks,
                                       record.source, problem))


def _server_sha256(response: requests.Response) -> str | None:
    """The SHA-256 Hugging Face publishes for an LFS file (X-Linked-ETag, or its own ETag), if any."""
    for hop in (*response.history, response):
        candidates = [hop.headers.get("X-Linked-ETag")]
        if _is_hugging_face(hop.url):
            candidates.append(hop.headers.get("ETag"))
        for value in candidates:
            value = (value or "").removeprefix("W/").strip('"').lower()
            if _SHA256_HEX.fullmatch(value):
                return value
    return None


def _server_size(response: requests.Response) -> int | None:
    for hop in (*response.history, response):
        if (value := hop.headers.get("X-Linked-Size", "")).isdigit():
            return int(value)
    return None


class _Transient(Exception):
    """Worth retrying the same URL (after a pause), resuming where the download stopped."""


class _UrlFailed(Exception):
    """This URL will not give the file; try the next one."""


class _Download:
    """One file being downloaded into its .part file, with running hashes of what is on disk."""

    def __init__(self, target: Path, urls: Sequence[str], expected: ExpectedFile, settings: DownloadSettings,
                 progress: ProgressCallback | None):
        self.target, self.urls, self.expected, self.settings = target, urls, expected, settings
        self.part = target.with_name(target.name + PART_SUFFIX)
        self.hashes = _Hashes()
        self.server_sha256: str | None = None
        self.total = expected.size
        self.bar = _Progress(target.name, self.total, 0, progress)
        if self.part.exists() and self.total is not None and self.part.stat().st_size > self.total:
            self.part.unlink()
        if self.part.exists():
            self.hashes.add_file(self.part, settings.chunk_bytes)
            logger.info("Resuming %s from %d bytes already in %s", target.name, self.hashes.size, self.part)
        self.bar.set_total(self.total, self.hashes.size)

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.hashes = _Hashes()
        self.server_sha256 = None
        self.bar.set_total(self.total, 0)

    def fetch(self, url: str, session: requests.Session) -> None:
        """Bring the .part file to the complete size from `url`, retrying transient failures."""
        failures = 0
        while True:
            start = self.hashes.size
            try:
                self._request(url, session)
                return
            except _Transient as exc:
                failures = 1 if self.hashes.size > start else failures + 1
                if failures >= self.settings.attempts_per_url:
                    raise _UrlFailed(f"{exc} ({failures} attempts in a row without progress)") from exc
                pause = min(self.settings.backoff_seconds * 2 ** (failures - 1), self.settings.max_backoff_seconds)
                logger.warning("Downloading %s from %s: %s; retrying in %.1f s", self.target.name, url, exc, pause)
                time.sleep(pause)

    def _request(self, url: str, session: requests.Session) -> None:
        offset = self.hashes.size
        if self.total is not None and offset == self.total:
            return
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if (token := _hf_token()) and _is_hugging_face(url):
            headers["Authorization"] = f"Bearer {token}"
        try:
            with session.get(url, headers=headers, stream=True, allow_redirects=True,
                             timeout=(self.settings.connect_timeout, self.settings.read_timeout)) as response:
                self._accept_response(response, offset)
                self._stream_body(response)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"connection failed: {exc}") from exc
        if self.total is not None and self.hashes.size < self.total:
            raise _Transient(f"connection closed after {self.hashes.size} of {self.total} bytes")

    def _accept_response(self, response: requests.Response, offset: int) -> None:
        status = response.status_code
        if status in (401, 403):
            raise _UrlFailed(f"HTTP {status}: access denied (set HF_TOKEN if the file needs a Hugging Face login)")
        if status in (404, 410):
            raise _UrlFailed(f"HTTP {status}: not found")
        if status == 416:
            self.restart()
            raise _Transient("HTTP 416: the server refused to resume; starting again from the beginning")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}")
        if status not in (200, 206):
            raise _UrlFailed(f"HTTP {status}")
        server_sha256 = _server_sha256(response)
        if self.server_sha256 and server_sha256 and server_sha256 != self.server_sha256:
            logger.warning("%s changed on the server since the download started; starting again", self.target.name)
            self.restart()
            raise _Transient("the file changed on the server")
        self.server_sha256 = server_sha256 or self.server_sha256
        if not self.expected.has_checksum and self.server_sha256 is None:
            raise _UrlFailed("the server publishes no checksum for the file and none is known, so it cannot be verified")
        length = int(response.headers["Content-Length"]) if response.headers.get("Content-Length", "").isdigit() else None
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                self.restart()
                raise _Transient(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
            total = int(match.group(3)) if match.group(3) != "*" else None
        else:
            if offset:
                logger.info("The server ignored the resume request for %s; downloading it again from the start",
                            self.target.name)
                self.restart()
            total = length
        total = total or _server_size(response)
        if total is not None:
            if self.expected.size is not None and total != self.expected.size:
                raise _UrlFailed(f"the server offers {total} bytes, expected {self.expected.size}")
            if self.total is None:
                _check_free_space(self.target, total - self.hashes.size, self.urls)
            self.total = total
            self.bar.set_total(total, self.hashes.size)

    def _stream_body(self, response: requests.Response) -> None:
        try:
            with open(self.part, "ab") as file:
                for chunk in response.iter_content(self.settings.chunk_bytes):
                    file.write(chunk)
                    self.hashes.update(chunk)
                    self.bar.advance(len(chunk))
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(
                    f"The disk is full while downloading {self.target.name} ({self.hashes.size} of "
                    f"{self.total or '?'} bytes saved in {self.part}). Free some space and run again: the download "
                    f"resumes. {manual_install_hint(self.urls, self.target)}.") from exc
            raise

    def verify(self) -> tuple[list[str], list[str]]:
        """(problems, checks done) for the complete .part file."""
        md5, sha256 = self.hashes.md5.hexdigest(), self.hashes.sha256.hexdigest()
        expected = self.expected
        problems = _mismatches(expected, self.hashes.size, md5, sha256)
        checks = _pinned_checks(expected)
        if self.server_sha256:
            checks.append("SHA-256 published by the server")
            if sha256 != self.server_sha256:
                problems.append(f"SHA-256 is {sha256}, the server publishes {self.server_sha256}")
        elif not expected.has_checksum:
            problems.append("no checksum to verify it against")
        return problems, checks

    def install(self, checks: list[str], source: str) -> None:
        """Atomically move the verified .part file into place and record its digests."""
        os.replace(self.part, self.target)
        stat = self.target.stat()
        _write_record(self.target, FileRecord(stat.st_size, stat.st_mtime_ns, self.hashes.md5.hexdigest(),
                                              self.hashes.sha256.hexdigest(), True, tuple(checks), source))
        logger.info("Downloaded %s (MD5 %s, verified: %s)", self.target, self.hashes.md5.hexdigest(), ", ".join(checks))


def _check_free_space(target: Path, needed: int, urls: Sequence[str]) -> None:
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise DownloadError(
            f"Not enough disk space to download {target.name}: it needs {needed / 1e9:.2f} GB more, but only "
            f"{free / 1e9:.2f} GB are free in {target.parent}. Free some space (or point the model folder at "
            f"another disk) and run again. {manual_install_hint(urls, target)}.")


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
        f"FLASHFACE_MODELS_DIR outside ComfyUI). {manual_install_hint(urls, directories[0] / file_name)}.")


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
            f"(lock {lock.lock_file}). Wait for it, or stop it and run again.") from exc


def download_file(urls: Sequence[str], directories: Sequence[Path], file_name: str, expected: ExpectedFile, *,
                  progress: ProgressCallback | None = None, settings: DownloadSettings | None = None) -> Path:
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
            f"download it.")
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


def _download_verified(urls: list[str], target: Path, expected: ExpectedFile, settings: DownloadSettings,
                       progress: ProgressCallback | None) -> None:
    download = _Download(target, urls, expected, settings, progress)
    failures = []
    try:
        if download.total is not None:
            _check_free_space(target, download.total - download.hashes.size, urls)
        with requests.Session() as session:
            for url in urls:
                for attempt in range(1, settings.checksum_attempts + 1):
                    try:
                        download.fetch(url, session)
                    except _UrlFailed as exc:
                        failures.append(f"{url}: {exc}")
                        break
                    problems, checks = download.verify()
                    if not problems:
                        download.install(checks, url)
                        return
                    logger.warning("Download %d of %s from %s is corrupt (%s)", attempt, target.name, url,
                                   "; ".join(problems))
                    download.restart()
                    failures.append(f"{url}: download {attempt} failed its check ({'; '.join(problems)})")
    finally:
        download.bar.close()
    aside = _aside_path(target)
    kept = f" The earlier, bad copy is kept as {aside}; delete it once you have a good one." if aside.exists() else ""
    raise DownloadError(
        f"Could not download {target.name}:\n  " + "\n  ".join(failures)
        + f"\n{manual_install_hint(urls, target)}; it is checked at the next start.{kept}")
