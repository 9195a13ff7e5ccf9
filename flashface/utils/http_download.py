"""One model file over HTTP into its ``.part`` file: resumed, retried, checked before it is kept.

`download_to_part` tries the URLs in order. Each transfer streams into ``<file>.part`` with the
running MD5/SHA-256 (`checksums.Hashes`), resumes with an HTTP Range request after a broken
connection (a server that ignores Range, or resumes at the wrong place, gets a clean restart),
retries transient failures (connection reset, timeout, HTTP 429/5xx) with exponential backoff,
and gives a URL up after `DownloadSettings.attempts_per_url` failures in a row without a new byte.
A complete file is checked (size, pinned MD5/SHA-256, the SHA-256 Hugging Face publishes for LFS
files); a download with no checksum to check it against is refused before its body is read.

Environment: ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) is sent to Hugging Face hosts only;
``HF_ENDPOINT`` replaces ``https://huggingface.co`` in every URL (e.g. a regional mirror);
``FLASHFACE_MIRROR`` is a URL prefix tried first as ``<prefix>/<file name>``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from ..errors import DownloadError
from .checksums import ExpectedFile, Hashes, Progress, ProgressCallback, mismatches, pinned_checks

logger = logging.getLogger(__name__)

HF_HOSTS = ("huggingface.co", "hf.co")
HUGGING_FACE = "https://huggingface.co"
PART_SUFFIX = ".part"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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


def source_urls(urls: Sequence[str], file_name: str) -> list[str]:
    """The URLs to try, in order, after the FLASHFACE_MIRROR and HF_ENDPOINT overrides."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    rewritten = [
        endpoint + url[len(HUGGING_FACE) :] if endpoint and url.startswith(HUGGING_FACE + "/") else url for url in urls
    ]
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


@dataclass(frozen=True)
class VerifiedPart:
    """A complete, checked ``.part`` file, ready to be renamed to its target."""

    path: Path
    md5: str
    sha256: str
    checks: tuple[str, ...]
    source: str


class _PartialDownload:
    """One file being downloaded into its .part file, with running hashes of what is on disk."""

    def __init__(
        self,
        target: Path,
        urls: Sequence[str],
        expected: ExpectedFile,
        settings: DownloadSettings,
        progress: ProgressCallback | None,
    ):
        self.target, self.urls, self.expected, self.settings = target, urls, expected, settings
        self.part = target.with_name(target.name + PART_SUFFIX)
        self.hashes = Hashes()
        self.server_sha256: str | None = None
        self.total = expected.size
        self.bar = Progress(target.name, self.total, 0, progress)
        if self.part.exists() and self.total is not None and self.part.stat().st_size > self.total:
            self.part.unlink()
        if self.part.exists():
            self.hashes.add_file(self.part, settings.chunk_bytes)
            logger.info("Resuming %s from %d bytes already in %s", target.name, self.hashes.size, self.part)
        self.bar.set_total(self.total, self.hashes.size)

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.hashes = Hashes()
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
            with session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=True,
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
            ) as response:
                self._accept(response, offset)
                self._stream_body(response)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"connection failed: {exc}") from exc
        if self.total is not None and self.hashes.size < self.total:
            raise _Transient(f"connection closed after {self.hashes.size} of {self.total} bytes")

    def _accept(self, response: requests.Response, offset: int) -> None:
        """Take the response's body as the continuation of the .part file, or say why not."""
        self._check_status(response.status_code)
        self._check_server_checksum(response)
        total = (
            self._resumed_total(response, offset) if response.status_code == 206 else self._full_total(response, offset)
        )
        total = total or _server_size(response)
        if total is not None:
            self._take_total(total)

    def _check_status(self, status: int) -> None:
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

    def _check_server_checksum(self, response: requests.Response) -> None:
        """Keep the SHA-256 the server publishes; a new one means the file changed there."""
        published = _server_sha256(response)
        if self.server_sha256 and published and published != self.server_sha256:
            logger.warning("%s changed on the server since the download started; starting again", self.target.name)
            self.restart()
            raise _Transient("the file changed on the server")
        self.server_sha256 = published or self.server_sha256
        if not self.expected.has_checksum and self.server_sha256 is None:
            raise _UrlFailed(
                "the server publishes no checksum for the file and none is known, so it cannot be verified"
            )

    def _resumed_total(self, response: requests.Response, offset: int) -> int | None:
        """A 206 must continue exactly where the .part file ends."""
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            self.restart()
            raise _Transient(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
        return int(match.group(3)) if match.group(3) != "*" else None

    def _full_total(self, response: requests.Response, offset: int) -> int | None:
        """A 200 sends the whole file: what was already there is dropped."""
        if offset:
            logger.info(
                "The server ignored the resume request for %s; downloading it again from the start", self.target.name
            )
            self.restart()
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

    def _take_total(self, total: int) -> None:
        if self.expected.size is not None and total != self.expected.size:
            raise _UrlFailed(f"the server offers {total} bytes, expected {self.expected.size}")
        if self.total is None:
            check_free_space(self.target, total - self.hashes.size, self.urls)
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
                    f"resumes. {manual_install_hint(self.urls, self.target)}."
                ) from exc
            raise

    def problems(self) -> tuple[list[str], list[str]]:
        """(problems, checks done) for the complete .part file."""
        md5, sha256 = self.hashes.md5.hexdigest(), self.hashes.sha256.hexdigest()
        problems = mismatches(self.expected, self.hashes.size, md5, sha256)
        checks = pinned_checks(self.expected)
        if self.server_sha256:
            checks.append("SHA-256 published by the server")
            if sha256 != self.server_sha256:
                problems.append(f"SHA-256 is {sha256}, the server publishes {self.server_sha256}")
        elif not self.expected.has_checksum:
            problems.append("no checksum to verify it against")
        return problems, checks


def check_free_space(target: Path, needed: int, urls: Sequence[str]) -> None:
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise DownloadError(
            f"Not enough disk space to download {target.name}: it needs {needed / 1e9:.2f} GB more, but only "
            f"{free / 1e9:.2f} GB are free in {target.parent}. Free some space (or point the model folder at "
            f"another disk) and run again. {manual_install_hint(urls, target)}."
        )


def download_to_part(
    urls: Sequence[str],
    target: Path,
    expected: ExpectedFile,
    settings: DownloadSettings,
    progress: ProgressCallback | None,
) -> VerifiedPart | list[str]:
    """Download `target` into its .part file from the first URL that gives a file that passes its
    checks; the verified part, or what went wrong with each URL."""
    download = _PartialDownload(target, urls, expected, settings, progress)
    failures = []
    try:
        if download.total is not None:
            check_free_space(target, download.total - download.hashes.size, urls)
        with requests.Session() as session:
            for url in urls:
                for attempt in range(1, settings.checksum_attempts + 1):
                    try:
                        download.fetch(url, session)
                    except _UrlFailed as exc:
                        failures.append(f"{url}: {exc}")
                        break
                    problems, checks = download.problems()
                    if not problems:
                        return VerifiedPart(
                            download.part,
                            download.hashes.md5.hexdigest(),
                            download.hashes.sha256.hexdigest(),
                            tuple(checks),
                            url,
                        )
                    logger.warning(
                        "Download %d of %s from %s is corrupt (%s)", attempt, target.name, url, "; ".join(problems)
                    )
                    download.restart()
                    failures.append(f"{url}: download {attempt} failed its check ({'; '.join(problems)})")
    finally:
        download.bar.close()
    return failures
