"""Noise schedule and sampling tables: parity with the official code, the trailing quirk, Karras."""

import math
import re

import pytest
import torch

from flashface.errors import InvalidInputError
from flashface.sampling.noise_levels import vp_to_ve
from flashface.sampling.schedule import (
    NoiseSchedule,
    discretize,
    karras_sigmas,
    sampling_sigmas,
)
from parity import cases

TABLE_KEY = re.compile(r"^(?P<discretization>[a-z]+)_(?P<steps>\d+)_sigmas$")


def schedule_of(case) -> NoiseSchedule:
    """The schedule named in the case's `function` ("noise_schedule('scaled_linear', n=…, beta_min=…, …)")."""
    function = case.config["function"]
    assert "'scaled_linear'" in function, function
    params = dict(re.findall(r"(n|beta_min|beta_max)=([0-9.e-]+)", function))
    return NoiseSchedule(int(params["n"]), float(params["beta_min"]), float(params["beta_max"]))


def assert_timesteps_match(schedule, sigmas, ours, expected):
    """Equal, except that a timestep lying on a .5 tie in float32 may round either way.

    The official rounding (torch.round, half to even) of the inverse-interpolated timestep gives
    166 for the 166.5 of linspace/25 on this machine while the fixture records 167: the tie is
    decided by the last bit of a float32 log, which differs between CPUs. Every other entry must
    match exactly.
    """
    assert len(ours) == len(expected)
    for sigma, mine, theirs in zip(sigmas, ours, expected):
        if mine != theirs:
            fractional = schedule.timestep_at(sigma)
            assert abs(fractional - math.floor(fractional) - 0.5) < 1e-3, (sigma, mine, theirs, fractional)
            assert abs(mine - theirs) == 1


@pytest.mark.parametrize("case", cases("schedule"))
def test_vp_sigma_table(case):
    schedule = schedule_of(case)
    torch.testing.assert_close(schedule.sigmas.float(), case.expected["sigmas"], atol=case.atol, rtol=case.rtol)
    assert schedule.sigmas.dtype == torch.float64


@pytest.mark.parametrize("case", cases("schedule"))
def test_every_discretization_table(case):
    schedule = schedule_of(case)
    tables = {k: v for k, v in case.expected.items() if TABLE_KEY.match(k)}
    assert tables, "the schedule case holds no <discretization>_<steps>_sigmas table"
    for key, expected in tables.items():
        match = TABLE_KEY.match(key)
        discretization, steps = match["discretization"], int(match["steps"])
        sigmas = sampling_sigmas(schedule, steps, discretization)
        torch.testing.assert_close(sigmas, expected, atol=case.atol, rtol=case.rtol, msg=key)
        timesteps = [schedule.model_timestep(s) for s in sigmas[:-1]]
        assert_timesteps_match(
            schedule,
            sigmas[:-1],
            timesteps,
            case.config["model_timesteps"][f"{discretization}_{steps}_model_timesteps"],
        )


def test_trailing_gives_one_extra_step_for_exactly_the_documented_counts():
    extra = [steps for steps in range(1, 201) if len(discretize(steps, "trailing")) == steps + 1]
    assert extra == [61, 103, 121, 122]
    assert all(len(discretize(steps, "trailing")) == steps for steps in range(1, 201) if steps not in extra)
    assert discretize(61, "trailing")[-1] == 0


def test_integer_timesteps_round_trip_and_fractional_ones_invert():
    schedule = NoiseSchedule()
    table = schedule.sigmas.float()
    assert [schedule.model_timestep(s) for s in table] == list(range(schedule.num_timesteps))
    fractional = torch.tensor([0.25, 17.5, 400.75, 998.5])
    for t, sigma in zip(fractional, schedule.sigma_at(fractional)):
        assert schedule.timestep_at(sigma) == pytest.approx(float(t), abs=2e-3)
    assert schedule.timestep_at(1.0) == schedule.num_timesteps - 1


def test_coefficients_are_the_integer_table_values():
    schedule = NoiseSchedule()
    sigma, alpha = schedule.coefficients(500)
    assert sigma == float(schedule.sigmas[500].float())
    assert alpha**2 + sigma**2 == pytest.approx(1, abs=1e-6)


def test_karras_spacing_keeps_the_range_and_is_uniform_in_ve_root():
    schedule = NoiseSchedule()
    steps = 12
    plain = sampling_sigmas(schedule, steps)
    karras = sampling_sigmas(schedule, steps, spacing="karras")
    assert len(karras) == len(plain) and karras[-1] == 0
    torch.testing.assert_close(karras[0], plain[0])
    torch.testing.assert_close(karras[-2], plain[-2])
    roots = vp_to_ve(karras[:-1].double()) ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(steps - 1), atol=1e-5, rtol=0)
    timesteps = [schedule.model_timestep(s) for s in karras[:-1]]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] == 999
    assert karras_sigmas(2, 0.1, 0.9).tolist() == pytest.approx([0.9, 0.1], abs=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: discretize(10, "karras"),
        lambda: discretize(0),
        lambda: sampling_sigmas(NoiseSchedule(), 10, spacing="exponential"),
    ],
)
def test_bad_options_are_rejected(call):
    with pytest.raises(InvalidInputError):
        call()
