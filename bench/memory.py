"""Process memory readings for the bench scripts (Linux /proc)."""

from __future__ import annotations

import os
import threading
from typing import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size in bytes: anonymous memory plus resident pages of mapped files."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_anon() -> int:
    """Anonymous resident memory in bytes (excludes memory-mapped file pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Highest value of `read()` while the `with` block runs, sampled every 10 ms."""

    def __init__(self, read: Callable[[], int] = rss):
        self.read = read
        self.peak = 0

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while True:
            self.peak = max(self.peak, self.read())
            if self._stop.wait(0.01):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())
