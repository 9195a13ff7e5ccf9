"""GenerationSettings: presets, and values out of range or of the wrong kind refused with their name."""

from __future__ import annotations

import pytest

from flashface.errors import InvalidInputError
from flashface.settings import PRESETS, GenerationSettings


def test_a_preset_replaces_the_settings_it_names_and_keeps_the_others():
    chosen = GenerationSettings(steps=7, text_guidance=5.0).with_preset("age_change")
    assert chosen.steps == 7
    for name, settings in PRESETS.items():
        assert all(getattr(GenerationSettings().with_preset(name), key) == value for key, value in settings.items())
    assert chosen.text_guidance == PRESETS["age_change"]["text_guidance"] != 5.0
    with pytest.raises(InvalidInputError, match="id_fidelity"):
        GenerationSettings().with_preset("no_such_preset")


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(batch_size=0), "batch_size must be a whole number at least 1"),
        (dict(noise="gpu"), "unknown noise 'gpu'"),
        (dict(solver="magic"), "unknown solver 'magic'"),
        (dict(text_guidance=float("nan")), "text_guidance must be a finite number"),
        (dict(seed=-1), "seed must be a whole number"),
        (dict(seed=2**64), "seed must be a whole number"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(seed=True), "seed must be a whole number"),
    ],
)
def test_bad_settings_are_explained(settings, message):
    with pytest.raises(InvalidInputError, match=message):
        GenerationSettings(**settings)


@pytest.mark.parametrize(
    "name, value",
    [
        ("text_guidance", float("nan")),
        ("text_guidance", -1.0),
        ("reference_guidance_strength", float("inf")),
        ("reference_feature_strength", float("nan")),
        ("reference_feature_strength_before_launch", float("-inf")),
        ("launch_timestep", 1001),
        ("launch_timestep", -1),
        ("guide_rescale", 1.5),
        ("text_guidance", "7.5"),
    ],
)
def test_guidance_settings_that_are_not_finite_or_out_of_range_are_refused(name, value):
    with pytest.raises(InvalidInputError, match=f"{name} must be a (finite|whole) number"):
        GenerationSettings(**{name: value})
