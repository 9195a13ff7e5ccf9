"""Out-of-memory handling shared by the networks: recognise the error on every backend, free the
allocator's cache, and retry a computation in smaller pieces."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/ROCm/XPU raise torch.OutOfMemoryError (torch 2.5 and later; before it only
    torch.cuda.OutOfMemoryError, which 2.5 made the same class); MPS and the CPU allocator a
    RuntimeError."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _MESSAGES)


def free_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks of `device` back, so a retry has room."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def first_that_fits(attempts: Sequence[tuple[str, Callable[[], T]]], device: torch.device) -> T:
    """Run the attempts in order (largest piece first) until one does not run out of memory."""
    for index, (_, attempt) in enumerate(attempts):
        try:
            return attempt()
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(error) or index == len(attempts) - 1:
                raise
            logger.warning(
                "Out of memory on %s (%s); trying again %s", device, str(error).splitlines()[0], attempts[index + 1][0]
            )
        free_cached_memory(device)
    raise AssertionError("no attempts given")
