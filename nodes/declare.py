"""What every FlashFace node declares the same way: its menu category, its description (the
class docstring), its outputs (name, ComfyUI type and tooltip side by side), and the widgets of
generation settings (default, range and help from `flashface.settings`)."""

from __future__ import annotations

import inspect

from ..flashface.prompts import NEGATIVE_POSTFIX, POSITIVE_POSTFIX
from ..flashface.settings import GenerationSettings, default, setting_info

BOX_CORNERS = (
    ("face_x1", "Left edge of the face box, as a fraction of the image width."),
    ("face_y1", "Top edge of the face box, as a fraction of the image height."),
    ("face_x2", "Right edge of the face box, as a fraction of the image width."),
    ("face_y2", "Bottom edge of the face box, as a fraction of the image height."),
)
COMFY_TYPES = {int: "INT", float: "FLOAT", bool: "BOOLEAN"}
WIDGET_OPTIONS = {"seed": {"control_after_generate": True}}
EXTRA_HELP = {
    "seed": " Drawn on the CPU, so a seed gives the same image on every device.",
    "prompt_postfixes": f" Quality words: '{POSITIVE_POSTFIX}'; negative list: '{NEGATIVE_POSTFIX}'.",
}


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


def setting_input(name: str) -> tuple:
    """A widget for a setting of `GenerationSettings`: its default, range and help."""
    info, value = setting_info(name), default(name)
    spec = {"default": value, "tooltip": f"{info.help}{EXTRA_HELP.get(name, '')} Official: {value}."}
    if info.choices is not None:
        return list(info.choices), spec
    spec.update(
        (key, bound) for key, bound in (("min", info.low), ("max", info.high), ("step", info.step)) if bound is not None
    )
    return COMFY_TYPES[info.kind], {**spec, **WIDGET_OPTIONS.get(name, {})}


def box_inputs() -> dict:
    info = setting_info("face_box")
    return {
        name: (
            "FLOAT",
            {"default": value, "min": info.low, "max": info.high, "step": info.step, "tooltip": f"{tip} {info.help}"},
        )
        for (name, tip), value in zip(BOX_CORNERS, default("face_box"))
    }


def settings_from_inputs(inputs: dict) -> GenerationSettings:
    """The settings of a node's widget values: each by its name, the face box from its four
    corners; settings absent (optional inputs of prompts saved before they existed) keep the
    official defaults."""
    values = dict(inputs)
    if any(name in values for name, _ in BOX_CORNERS):
        values["face_box"] = tuple(values.pop(name) for name, _ in BOX_CORNERS)
    return GenerationSettings(**values)
