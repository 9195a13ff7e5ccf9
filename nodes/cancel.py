"""ComfyUI's Cancel for the library's long loops (sampling steps, photos, images, tiles)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import comfy.model_management as mm

from ..flashface.errors import CancelCheck, GenerationCancelled


@contextmanager
def comfy_cancel() -> Iterator[CancelCheck]:
    """The check to hand the library (ComfyUI's Cancel button); its GenerationCancelled becomes
    ComfyUI's interruption, which ends the run as cancelled rather than failed."""
    try:
        yield mm.processing_interrupted
    except GenerationCancelled as cancelled:
        raise mm.InterruptProcessingException() from cancelled
