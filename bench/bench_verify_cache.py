"""Warm-start cost of checking a model file through its sidecar, versus hashing the file again.

Writes a file of --gigabytes random-looking bytes to a temporary folder, checks it once with
`verify_file` (which hashes it and writes ``<file>.flashface-check.json``), then times:

* the warm start: `verify_file` again (a ``stat`` plus reading the small JSON sidecar), median of
  --repeats runs, in milliseconds;
* re-hashing the whole file: MD5 alone, SHA-256 alone, and both in one
  read as `hash_file` does on a cold start, in seconds. The file was just written, so these are
  page-cache-warm figures (CPU-bound); a cold disk adds its read time on top.

    python bench/bench_verify_cache.py                 # 1 GB
    python bench/bench_verify_cache.py --gigabytes 0.25 --dir /path/on/another/disk
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from flashface.utils.cache_utils import ExpectedFile, hash_file, verify_file  # noqa: E402


def write_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 24)
    with open(path, "wb") as file:
        for offset in range(0, size, len(block)):
            file.write(block[: min(len(block), size - offset)])


def seconds(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def file_digest(path: Path, algorithm: str) -> str:
    """One digest of the whole file, read in 1 MiB chunks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--dir", default=None, help="folder for the temporary file (default: the system temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the size-only acceptance warning is expected here
    size = int(args.gigabytes * 1e9)
    with PeakMemory() as memory, tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "model.bin"
        write_file(path, size)
        expected = ExpectedFile(size=size)
        first_check = seconds(lambda: verify_file(path, expected))
        warm = [seconds(lambda: verify_file(path, expected)) for _ in range(args.repeats)]
        md5 = seconds(lambda: file_digest(path, "md5"))
        sha256 = seconds(lambda: file_digest(path, "sha256"))
        both = seconds(lambda: hash_file(path))
    gigabytes = size / 1e9
    print(f"file: {gigabytes:.2f} GB in {folder}")
    print(
        f"warm start through the sidecar: {statistics.median(warm) * 1e3:.3f} ms median, "
        f"{max(warm) * 1e3:.3f} ms worst of {args.repeats}"
    )
    print(f"first check (hash both + write sidecar): {first_check:.2f} s")
    print(f"re-hash MD5 only:           {md5:.2f} s ({gigabytes / md5:.2f} GB/s)")
    print(f"re-hash SHA-256 only:       {sha256:.2f} s ({gigabytes / sha256:.2f} GB/s)")
    print(f"re-hash MD5+SHA-256 (1 read, as on a cold start): {both:.2f} s ({gigabytes / both:.2f} GB/s)")
    print(f"sidecar speed-up over re-hashing both: {both / statistics.median(warm):.0f}x")
    print(memory)


if __name__ == "__main__":
    main()
