"""What every FlashFace node declares the same way: its menu category, its description (the
class docstring), and its outputs (name, ComfyUI type and tooltip side by side)."""

from __future__ import annotations

import inspect


class FlashFaceNode:
    """Base of the pack's nodes: a node's docstring is its DESCRIPTION in ComfyUI."""

    CATEGORY = "FlashFace"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.DESCRIPTION = " ".join(inspect.cleandoc(cls.__doc__ or "").split())


def outputs(*declared: tuple[str, str, str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS) of outputs given as (name, type, tooltip)."""
    names, types, tooltips = zip(*declared)
    return tuple(types), tuple(names), tuple(tooltips)
