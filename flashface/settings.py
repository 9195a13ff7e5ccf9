"""The settings of one generation, in one frozen object: `GenerationSettings`.

Its defaults are the official FlashFace demo's, stated here once; the Generator node's widgets,
the command line's flags and `FlashFacePipeline.generate` all read them from here, under the
same names (the command line spells them with dashes). `with_preset` gives the settings the
FlashFace authors recommend for a purpose; `setting_info` gives a setting's help text and range,
used as widget tooltip and ``--help`` line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import InvalidInputError
from .sampling.schedule import DISCRETIZATIONS, NUM_TIMESTEPS, SPACINGS
from .sampling.solvers import SOLVERS

NOISE_SOURCES = ("cpu", "device")
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SettingInfo:
    """What a user is told about a setting, its kind (the type of its value: bool, int, float, str
    or tuple) and its range (None: unbounded)."""

    help: str
    kind: type
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None


def _setting(default, help: str, **info):
    """A field with its default and its `SettingInfo`; the kind is the default's type."""
    return field(default=default, metadata={"info": SettingInfo(help, type(default), **info)})


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generation's result besides the model, the faces, the prompts
    and a face mask. Checked when built; change with `dataclasses.replace` or `with_preset`."""

    seed: int = _setting(0, "Random seed of the initial noise and of the reference padding.", low=0, high=MAX_SEED)
    steps: int = _setting(35, "Sampling steps. Fewer is faster but rougher.", low=1, high=1000)
    solver: str = _setting("ddim", "Sampling method.", choices=tuple(SOLVERS))
    discretization: str = _setting(
        "trailing", "How the steps are spread over the 1000 training timesteps.", choices=DISCRETIZATIONS
    )
    sigma_spacing: str = _setting(
        "timesteps",
        "timesteps: noise levels at the chosen timesteps (official); karras: Karras et al. spacing "
        "between the same end points.",
        choices=SPACINGS,
    )
    text_guidance: float = _setting(
        7.5, "How strongly the prompt is followed (g, classifier-free guidance).", low=0.0, high=30.0, step=0.1
    )
    reference_feature_strength: float = _setting(
        1.2,
        "Weight of the reference faces' features inside the network once reference guidance is launched "
        "(λ, useful 0.8-1.3). Lower gives the prompt more freedom (e.g. age changes).",
        low=0.0,
        high=3.0,
        step=0.05,
    )
    reference_feature_strength_before_launch: float = _setting(
        0.85,
        "λ0: weight of the reference faces' features before the launch timestep, while reference guidance "
        "is not yet running.",
        low=0.0,
        high=3.0,
        step=0.05,
    )
    reference_guidance_strength: float = _setting(
        3.2,
        "Extra guidance towards the reference identity once launched (c, useful 1.8-4); 0 turns it off.",
        low=0.0,
        high=10.0,
        step=0.1,
    )
    launch_timestep: int = _setting(
        750,
        "A diffusion timestep on the 0-1000 scale (not a step number): reference guidance starts once "
        "sampling reaches timesteps at or below it.",
        low=0,
        high=NUM_TIMESTEPS,
        step=1,
    )
    guide_rescale: float = _setting(
        0.5,
        "φ: how far the guided prediction's spread is pulled back to the conditional one's (fixed in the "
        "official demo).",
        low=0.0,
        high=1.0,
    )
    face_box: tuple[float, float, float, float] = _setting(
        (0.3, 0.1, 0.6, 0.4),
        "Where the face goes: x1 y1 x2 y2 as fractions of the image width and height. As in "
        "the official code the face area is the square of the box's longer side, anchored "
        "at its top-left corner; all four 0 means no position hint.",
        low=0.0,
        high=1.0,
        step=0.01,
    )
    width: int = _setting(768, "Image width in pixels, a multiple of 8.", low=64, high=4096, step=8)
    height: int = _setting(768, "Image height in pixels, a multiple of 8.", low=64, high=4096, step=8)
    batch_size: int = _setting(1, "How many images to generate at once.", low=1, high=64)
    pad_references: bool = _setting(
        True,
        "With 1 to 3 reference faces, repeat faces chosen at random (from the seed) until there are four, "
        "as the official demo always does: the model was only run with four references. Off: each face "
        "is used once.",
    )
    prompt_postfixes: bool = _setting(
        True,
        "Add the official quality words to the positive prompt and the official negative list to the "
        "negative prompt (alone when the negative is empty), as the official demo always does. Off: both "
        "prompts are used as written.",
    )
    noise: str = _setting(
        "cpu",
        "cpu: the initial noise is drawn on the CPU, so a seed gives the same image on every device; "
        "device: drawn on the UNet's device, which on CUDA is the official code's noise.",
        choices=NOISE_SOURCES,
    )

    def __post_init__(self):
        if not isinstance(self.face_box, (tuple, list)) or len(self.face_box) != 4:
            raise InvalidInputError(f"face_box must be four numbers x1 y1 x2 y2, got {self.face_box!r}.")
        for item in dataclasses.fields(self):
            _check(item.name, getattr(self, item.name), item.metadata["info"])
        object.__setattr__(self, "face_box", tuple(float(v) for v in self.face_box))

    def with_preset(self, name: str) -> GenerationSettings:
        """These settings with the values of preset `name` (see PRESETS) in place of their own."""
        if name not in PRESETS:
            raise InvalidInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return dataclasses.replace(self, **PRESETS[name])


def _check(name: str, value, info: SettingInfo) -> None:
    if info.choices is not None:
        if value not in info.choices:
            raise InvalidInputError(f"unknown {name} {value!r}; choose one of {', '.join(info.choices)}.")
        return
    if info.kind is bool:
        if not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be true or false, got {value!r}.")
        return
    if isinstance(value, (tuple, list)):
        low, high = (-math.inf if info.low is None else info.low), (math.inf if info.high is None else info.high)
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
            for v in value
        ):
            raise InvalidInputError(
                f"{name} (the face box) must be finite numbers from {info.low} to {info.high}, got {tuple(value)!r}."
            )
        return
    values = (value,)
    whole = info.kind is int
    for number in values:
        if (
            isinstance(number, bool)
            or not isinstance(number, int if whole else (int, float))
            or not math.isfinite(number)
            or (info.low is not None and number < info.low)
            or (info.high is not None and number > info.high)
        ):
            limits = " and ".join(
                text
                for text, bound in ((f"at least {info.low}", info.low), (f"at most {info.high}", info.high))
                if bound is not None
            )
            what = "a whole number" if whole else "a finite number"
            raise InvalidInputError(f"{name} must be {what}{' ' + limits if limits else ''}, got {value!r}.")


def setting_info(name: str) -> SettingInfo:
    """Help text and range of a setting."""
    return GenerationSettings.__dataclass_fields__[name].metadata["info"]


def default(name: str):
    """The official default of a setting."""
    return GenerationSettings.__dataclass_fields__[name].default


OFFICIAL = GenerationSettings()

# The paper's recommended settings (official readme); a preset replaces the settings it names.
PRESETS: dict[str, dict] = {
    "id_fidelity": dict(
        face_box=(0.3, 0.2, 0.6, 0.5),
        reference_feature_strength=OFFICIAL.reference_feature_strength,
        reference_guidance_strength=OFFICIAL.reference_guidance_strength,
        launch_timestep=OFFICIAL.launch_timestep,
    ),
    "age_change": dict(
        text_guidance=8.5,
        reference_feature_strength=0.9,
        reference_guidance_strength=2.5,
        launch_timestep=OFFICIAL.launch_timestep,
    ),
}
