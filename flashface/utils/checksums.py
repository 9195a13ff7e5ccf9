"""What a model file must be, and its digests: the pieces the download cache checks files with.

`ExpectedFile` says what a file must be (exact size, MD5, SHA-256, readable format); `Hashes`
computes MD5 and SHA-256 in one read; `Progress` is a tqdm bar plus the caller's callback.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

ProgressCallback = Callable[[int, "int | None"], None]
"""Called with (bytes done, bytes in total or None when unknown)."""

_PROGRESS_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class ExpectedFile:
    """What a file must be: any of exact size, MD5, SHA-256 (lowercase hex), and readable in its
    format (`format_problem(path)` says what is wrong, or None; it runs when the file is hashed)."""

    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    format_problem: Callable[[Path], str | None] | None = None

    @property
    def has_checksum(self) -> bool:
        return bool(self.md5 or self.sha256)


class Progress:
    """A tqdm bar plus the caller's callback, throttled to a few updates per second."""

    def __init__(self, description: str, total: int | None, done: int, callback: ProgressCallback | None):
        self.total, self.done, self._callback = total, done, callback
        self._bar = tqdm(
            desc=description,
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None,
            leave=False,
        )
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


class Hashes:
    """MD5 and SHA-256 of a byte stream, computed together."""

    def __init__(self):
        self.md5, self.sha256, self.size = hashlib.md5(), hashlib.sha256(), 0

    def update(self, data: bytes | memoryview) -> None:
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def add_file(self, path: Path, chunk_bytes: int, progress: Progress | None = None) -> None:
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                self.update(view[:count])
                if progress is not None:
                    progress.advance(count)


def hash_file(path: Path, chunk_bytes: int = 1 << 20, progress: ProgressCallback | None = None) -> tuple[str, str]:
    """(MD5, SHA-256) of a file, read once."""
    hashes = Hashes()
    bar = Progress(f"checking {path.name}", path.stat().st_size, 0, progress)
    try:
        hashes.add_file(path, chunk_bytes, bar)
    finally:
        bar.close()
    return hashes.md5.hexdigest(), hashes.sha256.hexdigest()


def mismatches(expected: ExpectedFile, size: int, md5: str, sha256: str) -> list[str]:
    problems = []
    if expected.size is not None and size != expected.size:
        problems.append(f"size is {size} bytes, expected {expected.size}")
    if expected.md5 and md5 != expected.md5:
        problems.append(f"MD5 is {md5}, expected {expected.md5}")
    if expected.sha256 and sha256 != expected.sha256:
        problems.append(f"SHA-256 is {sha256}, expected {expected.sha256}")
    return problems


def pinned_checks(expected: ExpectedFile) -> list[str]:
    """Names of the checks `mismatches` makes, for the record."""
    checks = ["size"] if expected.size is not None else []
    return checks + [
        f"{name} pinned in the registry"
        for name, value in (("MD5", expected.md5), ("SHA-256", expected.sha256))
        if value
    ]
