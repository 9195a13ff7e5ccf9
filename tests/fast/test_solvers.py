"""Solvers on a toy problem with a known answer: Gaussian data x0 ~ N(MU, STD²) per element.

For that data the exact denoiser is analytic, E[x0 | x_σ] = MU + α·STD²/(α²·STD² + σ²)·(x − α·MU),
and the probability-flow ODE has a closed form in the VE variable y = x/α, s = σ/α:
y(s) − MU = (y(s0) − MU)·√(STD² + s²)/√(STD² + s0²). Every solver ends with x0 = D(y, s_last),
so the exact end point of the sampling procedure is D(y_exact(s_last), s_last).
"""

import math

import pytest
import torch

from flashface.errors import GenerationCancelled, InvalidInputError
from flashface.sampling.noise_levels import vp_to_ve
from flashface.sampling.schedule import NoiseSchedule, karras_sigmas, sampling_sigmas
from flashface.sampling.solvers import SOLVERS, get_solver

MU, STD = 0.7, 0.5
STOCHASTIC_SOLVERS = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2m_sde"})  # the rest are deterministic
DETERMINISTIC = sorted(set(SOLVERS) - STOCHASTIC_SOLVERS)
FIRST_ORDER = {"ddim", "euler"}


def gaussian_denoiser(x, sigma):
    alpha = math.sqrt(1 - sigma**2)
    return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x - alpha * MU)


def fixed_range_sigmas(steps: int) -> torch.Tensor:
    """Karras-spaced sigmas over the full table range, so only the step count changes."""
    schedule = NoiseSchedule()
    sigmas = karras_sigmas(steps, float(schedule.sigmas[0]), float(schedule.sigmas[-1]))
    return torch.cat([sigmas.double(), sigmas.new_zeros(1, dtype=torch.float64)])


def start_latents(sigma0: float, shape=(3, 4, 64, 64), seed=0) -> torch.Tensor:
    """Samples of the exact marginal at sigma0: N(α·MU, α²·STD² + σ²)."""
    alpha = math.sqrt(1 - sigma0**2)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return alpha * MU + math.sqrt(alpha**2 * STD**2 + sigma0**2) * noise


def exact_end(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s0, s_last = vp_to_ve(float(sigmas[0])), vp_to_ve(float(sigmas[-2]))
    y = x / math.sqrt(1 - float(sigmas[0]) ** 2)
    y_last = MU + (y - MU) * math.sqrt(STD**2 + s_last**2) / math.sqrt(STD**2 + s0**2)
    return MU + STD**2 / (STD**2 + s_last**2) * (y_last - MU)


def ode_error(name: str, steps: int) -> float:
    sigmas = fixed_range_sigmas(steps)
    x = start_latents(float(sigmas[0]))
    out = get_solver(name)(gaussian_denoiser, x, sigmas)
    return float((out - exact_end(x, sigmas)).abs().max())


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_solvers_converge_at_their_order(name):
    coarse, fine = ode_error(name, 40), ode_error(name, 80)
    if name in FIRST_ORDER:
        assert fine < 0.06 and coarse / fine > 1.8, (coarse, fine)
    else:
        assert fine < 3e-3 and coarse / fine > 3.4, (coarse, fine)


def test_euler_without_churn_is_ddim():
    sigmas = sampling_sigmas(NoiseSchedule(), 20)
    x = start_latents(float(sigmas[0]), shape=(2, 4, 8, 8))
    torch.testing.assert_close(
        get_solver("euler")(gaussian_denoiser, x, sigmas),
        get_solver("ddim")(gaussian_denoiser, x, sigmas),
        atol=1e-10,
        rtol=1e-10,
    )


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SOLVERS))
def test_stochastic_solvers_sample_the_target_distribution(name):
    steps = 160
    sigmas = fixed_range_sigmas(steps)
    x = start_latents(float(sigmas[0]))
    out = get_solver(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(5))
    s_last = vp_to_ve(float(sigmas[-2]))
    target_std = STD**2 / math.sqrt(STD**2 + s_last**2)
    # first-order ancestral Euler is biased by O(1/steps) in the variance; the others much less
    std_tolerance = 0.015 if name == "euler_ancestral" else 0.005
    assert abs(float(out.mean()) - MU) < 0.01
    assert abs(float(out.std()) - target_std) < std_tolerance


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_sizes_one_and_three(name):
    sigmas = sampling_sigmas(NoiseSchedule(), 8)
    batch = start_latents(float(sigmas[0]), shape=(3, 4, 8, 8)).float()
    run = get_solver(name)
    one = run(gaussian_denoiser, batch[:1], sigmas, generator=torch.Generator().manual_seed(1))
    three = run(gaussian_denoiser, batch, sigmas, generator=torch.Generator().manual_seed(1))
    assert one.shape == (1, 4, 8, 8) and three.shape == (3, 4, 8, 8)
    assert torch.isfinite(three).all() and three.dtype == torch.float32
    if name not in STOCHASTIC_SOLVERS:
        torch.testing.assert_close(three[:1], one)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_same_seed_same_output_other_seed_differs_only_if_stochastic(name):
    sigmas = sampling_sigmas(NoiseSchedule(), 6)
    x = start_latents(float(sigmas[0]), shape=(2, 4, 8, 8))
    run = get_solver(name)

    def sample(seed):
        return run(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(3), sample(3))
    assert torch.equal(sample(3), sample(4)) == (name not in STOCHASTIC_SOLVERS)


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SOLVERS))
def test_stochastic_solvers_need_a_generator(name):
    sigmas = sampling_sigmas(NoiseSchedule(), 4)
    with pytest.raises(InvalidInputError, match="torch.Generator"):
        get_solver(name)(gaussian_denoiser, torch.zeros(1, 4, 8, 8), sigmas)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_callback_per_step_and_cancellation(name):
    sigmas = sampling_sigmas(NoiseSchedule(), 5)
    x = torch.zeros(1, 4, 8, 8)
    seen = []
    get_solver(name)(
        gaussian_denoiser,
        x,
        sigmas,
        generator=torch.Generator().manual_seed(0),
        callback=lambda step, total, x0: seen.append((step, total, x0.shape)),
    )
    assert seen == [(i, 5, x.shape) for i in range(5)]

    calls = []

    def counting_denoiser(x, sigma):
        calls.append(sigma)
        return gaussian_denoiser(x, sigma)

    with pytest.raises(GenerationCancelled):
        get_solver(name)(
            counting_denoiser,
            x,
            sigmas,
            generator=torch.Generator().manual_seed(0),
            should_cancel=lambda: len(calls) >= 2,
        )
    assert 2 <= len(calls) <= 4  # cancelled before the step after the one that made the 2nd call


def test_unknown_solver_and_bad_sigmas_are_rejected():
    with pytest.raises(InvalidInputError, match="dpmpp_2m"):
        get_solver("unipc")
    with pytest.raises(InvalidInputError):
        get_solver("ddim")(gaussian_denoiser, torch.zeros(1, 4, 8, 8), torch.tensor([1.0, 0.5, 0.0]))
