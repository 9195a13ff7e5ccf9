"""Process memory readings for the bench scripts (Linux /proc): resident memory split into
anonymous (heap, tensors) and file-backed (mapped model files, libraries) pages, and its peak."""

from __future__ import annotations

import contextlib
import threading


def resident(pid: int | str = "self") -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of a process (file-backed includes shared memory)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0]) * 1024
    return values.get("RssAnon", 0), values.get("RssFile", 0) + values.get("RssShmem", 0)


def peak_rss(pid: int | str = "self") -> int:
    """The kernel's high-water mark of the process's resident memory (VmHWM), in bytes. Unlike
    getrusage's ru_maxrss it starts anew at exec, so a child does not report its parent's peak."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "VmHWM":
                return int(rest.split()[0]) * 1024
    return 0


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes: anonymous plus file-backed."""
    return sum(resident(pid))


def rss_anon(pid: int | str = "self") -> int:
    """Anonymous resident memory in bytes."""
    return resident(pid)[0]


def describe(anonymous: int, file_backed: int) -> str:
    return (
        f"{(anonymous + file_backed) / 2**30:.2f} GiB (anonymous {anonymous / 2**30:.2f}, "
        f"file-backed {file_backed / 2**30:.2f})"
    )


class PeakMemory:
    """Peak resident memory of a process while the `with` block runs, sampled every 10 ms:
    `peak` (total), `peak_anon`, and `peak_file` (file-backed at the moment of the total peak)."""

    def __init__(self, pid: int | str = "self"):
        self.pid = pid
        self.peak = self.peak_anon = self.peak_file = 0

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        anonymous, file_backed = resident(self.pid)
        self.peak_anon = max(self.peak_anon, anonymous)
        if anonymous + file_backed > self.peak:
            self.peak, self.peak_file = anonymous + file_backed, file_backed

    def _sample(self):
        while True:
            try:
                self._read()
            except OSError:  # the process ended
                return
            if self._stop.wait(0.01):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):  # the process may be gone
            self._read()

    def __str__(self) -> str:
        return (
            f"peak RSS {describe(self.peak - self.peak_file, self.peak_file)}, peak anonymous "
            f"{self.peak_anon / 2**30:.2f} GiB"
        )
