"""Exceptions whose message is shown to the user as is.

Every message says what went wrong and what to do about it. Nodes and the command line let
these propagate unchanged; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Callable


class FlashFaceError(Exception):
    """Base class of every user-facing FlashFace failure."""


class ModelFileError(FlashFaceError):
    """A model file is missing, unreadable, corrupt or not the model that was expected."""


class DownloadError(ModelFileError):
    """A model file could not be downloaded (offline, HTTP error, checksum mismatch, disk full)."""


class RegistryError(FlashFaceError, ValueError):
    """An entry of MODEL_REGISTRY is malformed (a developer's mistake, named with its key)."""


class FaceDetectionError(FlashFaceError):
    """No face, or more faces than allowed, in a reference photo."""


class InvalidInputError(FlashFaceError, ValueError):
    """A parameter is out of range or inconsistent (size not a multiple of 8, no references...)."""


class GenerationCancelled(FlashFaceError):
    """The caller asked to stop (checked between sampling steps, photos, images and tiles)."""


CancelCheck = Callable[[], bool]


def stop_if_cancelled(should_cancel: CancelCheck | None, what: str) -> None:
    """Raise GenerationCancelled(`what`) if `should_cancel()` says so."""
    if should_cancel is not None and should_cancel():
        raise GenerationCancelled(what)
