"""Exceptions whose message is shown to the user as is.

Every message says what went wrong and what to do about it. Nodes and the command line let
these propagate unchanged. `ContractError` is the one exception here that is not the user's to
fix: a broken contract between the library's own modules, reported as the bug it is.
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


ISSUES_URL = "https://github.com/flashface-comfy/ComfyUI-FlashFace/issues"


class ContractError(RuntimeError):
    """A caller broke a contract of a library function (row counts, tensor layouts, internal kinds):
    a bug in the calling code, never something a user typed, picked or wired (those are
    InvalidInputError). Not a FlashFaceError, so nothing shows it as the user's mistake."""

    def __init__(self, message: str):
        super().__init__(
            f"{message} This is a bug in ComfyUI-FlashFace (or in code calling its library), not a problem "
            f"with your inputs: please report it with this message at {ISSUES_URL}."
        )


class GenerationCancelled(FlashFaceError):
    """The caller asked to stop (checked between sampling steps, photos, images and tiles)."""


CancelCheck = Callable[[], bool]


def stop_if_cancelled(should_cancel: CancelCheck | None, what: str) -> None:
    """Raise GenerationCancelled(`what`) if `should_cancel()` says so."""
    if should_cancel is not None and should_cancel():
        raise GenerationCancelled(what)
