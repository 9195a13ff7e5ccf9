"""Diffusion solvers for FlashFace's variance-preserving (VP) parameterization.

Latents follow x = α·x0 + σ·ε with α = √(1 − σ²). Every solver takes

* ``denoise(x, sigma) -> x0``: the model's clean-latent prediction for VP latents x at VP noise
  std `sigma` (a Python float; it may lie between table entries for the 2nd-order solvers),
* ``x``: the initial latent at ``sigmas[0]`` (the official code starts from unit Gaussian noise),
* ``sigmas``: descending VP sigmas ending in 0 (`schedule.sampling_sigmas`),
* ``callback(step, total, x0)`` after each step's first model evaluation, ``should_cancel()``
  checked before each step (raises `GenerationCancelled`), and ``generator``: the only source of
  randomness of the stochastic solvers (deterministic ones ignore it).

`ddim` is the official update, written in VP terms. The others are the k-diffusion algorithms,
which are written for variance-exploding (VE) latents y = x0 + s·ε. VP and VE describe the same
process under y = x/α, s = σ/α, so they run on (y, s) and call the model with (α·y, σ). With
that change of variable DDIM is exactly the Euler method, which the tests use as a check. Each
solver is one loop, as in k-diffusion's ``sampling.py``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import cast

import torch

from ..errors import CancelCheck, InvalidInputError, stop_if_cancelled
from .noise_levels import ve_scale, vp_to_ve

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]


def _steps(sigmas, should_cancel: CancelCheck | None) -> Iterator[int]:
    """Step indices 0 … len(sigmas)−2, checking for cancellation before each."""
    for i in range(len(sigmas) - 1):
        stop_if_cancelled(should_cancel, f"Generation cancelled before step {i + 1} of {len(sigmas) - 1}.")
        yield i


def _report(callback: StepCallback | None, i: int, sigmas, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(i, len(sigmas) - 1, x0)


def _float_sigmas(sigmas) -> list[float]:
    values = [float(s) for s in sigmas]
    if len(values) < 2 or values[-1] != 0 or not 0 < values[0] < 1:
        raise InvalidInputError(
            "Solver sigmas must be VP noise levels in (0, 1) ending in 0; "
            "build them with flashface.sampling.schedule.sampling_sigmas."
        )
    return values


def _needed(generator: torch.Generator | None, solver: str) -> torch.Generator:
    """The generator a stochastic solver draws from; refused when there is none."""
    if generator is None:
        raise InvalidInputError(f"The {solver} solver is stochastic: pass a torch.Generator for its noise.")
    return generator


def _noise(like: torch.Tensor, generator: torch.Generator | None, solver: str) -> torch.Tensor:
    """Unit Gaussian noise drawn from `generator` (on its device), moved to `like`'s device."""
    generator = _needed(generator, solver)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(like.device, like.dtype)


class BrownianNoise:
    """The noise of ComfyUI's (and k-diffusion's) SDE samplers: increments of one Brownian motion
    over the VE levels, from torchsde's `BrownianTree` seeded with the generator's seed, on the CPU
    in fp32, so that a seed gives ComfyUI's noise for the same levels (its KSampler seeds the tree
    with the noise seed, which also seeds the initial noise). `between(i)` is the unit-variance
    noise of the step from level i to level i+1."""

    def __init__(self, like: torch.Tensor, levels: list[float], generator: torch.Generator | None, solver: str):
        seed = _needed(generator, solver).initial_seed()
        try:
            import torchsde
        except ImportError:
            raise InvalidInputError(
                f"The {solver} solver draws its noise from a Brownian tree, which needs the torchsde package "
                "(ComfyUI installs it): pip install torchsde, or pick another solver."
            ) from None
        self.levels = torch.tensor(levels, dtype=torch.float32)
        lowest, highest = self.levels[self.levels > 0].min(), self.levels.max()
        self.tree = torchsde.BrownianTree(lowest, torch.zeros(like.shape), highest, entropy=seed)

    def between(self, i: int, like: torch.Tensor) -> torch.Tensor:
        high, low = self.levels[i], self.levels[i + 1]
        with warnings.catch_warnings():
            # the tree rounds its ends to 6 digits and clamps the lowest level onto its start, as in
            # ComfyUI, with a warning that is no fault here
            warnings.filterwarnings("ignore", "Should have", UserWarning)
            increment = cast(torch.Tensor, self.tree(low, high))  # low to high; the levels run down: negated
        return (-increment / (low - high).abs().sqrt()).to(like.device, like.dtype)


def _in_ve(denoise: Denoiser, x: torch.Tensor, sigmas) -> tuple[Denoiser, torch.Tensor, list[float]]:
    """The VE view of a VP run: the denoiser of VE latents y at VE level s (the VP model called
    with (α·y, α·s)), the initial y = x/α₀, and the VE levels (the last is 0, so y ends as x)."""
    vp = _float_sigmas(sigmas)

    def denoise_ve(y: torch.Tensor, s: float) -> torch.Tensor:
        alpha = ve_scale(s)
        return denoise(y * alpha, s * alpha)

    return denoise_ve, x / math.sqrt(1 - vp[0] ** 2), [vp_to_ve(v) for v in vp]


def _ancestral_levels(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """(s_down, s_up): deterministic step to s_down, then fresh noise of std s_up (VE)."""
    if s_next == 0 or eta == 0:
        return s_next, 0.0
    s_up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    return math.sqrt(s_next**2 - s_up**2), s_up


@torch.no_grad()
def ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Official DDIM (η = 0): x ← α_{i+1}·x0 + σ_{i+1}·(x − α_i·x0)/σ_i."""
    sigmas = _float_sigmas(sigmas)
    for i in _steps(sigmas, should_cancel):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        _report(callback, i, sigmas, x0)
        eps = (x - math.sqrt(1 - sigma**2) * x0) / sigma
        x = math.sqrt(1 - sigma_next**2) * x0 + sigma_next * eps
    return x


@torch.no_grad()
def euler(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler (Karras et al. 2022, Alg. 2, without churn, as ComfyUI's euler by default): equals
    DDIM. `generator` is taken for the solvers' common signature and not used."""
    denoise_ve, y, s = _in_ve(denoise, x, sigmas)
    for i in _steps(s, should_cancel):
        x0 = denoise_ve(y, s[i])
        _report(callback, i, s, x0)
        y = y + (y - x0) / s[i] * (s[i + 1] - s[i])
    return y


@torch.no_grad()
def euler_ancestral(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler step down to s_down, then fresh noise up to the next level (stochastic)."""
    denoise_ve, y, s = _in_ve(denoise, x, sigmas)
    for i in _steps(s, should_cancel):
        x0 = denoise_ve(y, s[i])
        _report(callback, i, s, x0)
        s_down, s_up = _ancestral_levels(s[i], s[i + 1], eta)
        y = y + (y - x0) / s[i] * (s_down - s[i])
        if s_up > 0:
            y = y + _noise(y, generator, "euler_ancestral") * s_noise * s_up
    return y


@torch.no_grad()
def heun(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022); Euler on the last step. Two evaluations per step."""
    denoise_ve, y, s = _in_ve(denoise, x, sigmas)
    for i in _steps(s, should_cancel):
        x0 = denoise_ve(y, s[i])
        _report(callback, i, s, x0)
        slope = (y - x0) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            y = y + slope * dt
        else:
            y_next = y + slope * dt
            slope_next = (y_next - denoise_ve(y_next, s[i + 1])) / s[i + 1]
            y = y + (slope + slope_next) / 2 * dt
    return y


@torch.no_grad()
def dpm_2(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-2 (midpoint in log sigma), as k-diffusion's sample_dpm_2; Euler on the last
    step. With eta > 0 (`dpm_2_ancestral`) each step goes down to s_down, then fresh noise from
    the generator brings it up to the next level."""
    denoise_ve, y, s = _in_ve(denoise, x, sigmas)
    for i in _steps(s, should_cancel):
        x0 = denoise_ve(y, s[i])
        _report(callback, i, s, x0)
        s_down, s_up = _ancestral_levels(s[i], s[i + 1], eta)
        slope = (y - x0) / s[i]
        if s_down == 0:
            y = y + slope * (s_down - s[i])
        else:
            s_mid = math.exp((math.log(s[i]) + math.log(s_down)) / 2)
            y_mid = y + slope * (s_mid - s[i])
            y = y + (y_mid - denoise_ve(y_mid, s_mid)) / s_mid * (s_down - s[i])
        if s_up > 0:
            y = y + _noise(y, generator, "dpm_2_ancestral") * s_noise * s_up
    return y


@torch.no_grad()
def dpmpp_2m(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas,
    *,
    callback: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M): multistep, one evaluation per step, 2nd order from the second step. With
    eta > 0 (`dpmpp_2m_sde`) its SDE form (midpoint variant), as ComfyUI's sampler of that name: its
    noise comes from a Brownian tree seeded with the generator's seed (`BrownianNoise`)."""
    denoise_ve, y, s = _in_ve(denoise, x, sigmas)
    brownian = BrownianNoise(y, s, generator, "dpmpp_2m_sde") if eta > 0 else None
    previous_x0, previous_h = None, None
    for i in _steps(s, should_cancel):
        x0 = denoise_ve(y, s[i])
        _report(callback, i, s, x0)
        if s[i + 1] == 0:
            y = x0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            y = (s[i + 1] / s[i]) * math.exp(-eta_h) * y - math.expm1(-h - eta_h) * x0
            if previous_x0 is not None and previous_h is not None:
                y = y - 0.5 * math.expm1(-h - eta_h) * (h / previous_h) * (x0 - previous_x0)
            if brownian is not None:
                y = y + brownian.between(i, y) * s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
            previous_h = h
        previous_x0 = x0
    return y


def _stochastic(solver, name: str):
    """`solver` with eta = 1, under its own name."""

    @functools.wraps(solver)
    def variant(*args, **kwargs):
        return solver(*args, eta=1.0, **kwargs)

    variant.__name__ = variant.__qualname__ = name
    return variant


dpm_2_ancestral = _stochastic(dpm_2, "dpm_2_ancestral")
dpmpp_2m_sde = _stochastic(dpmpp_2m, "dpmpp_2m_sde")


SOLVERS = {
    "ddim": ddim,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
}


def get_solver(name: str):
    """The solver function registered under `name`."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise InvalidInputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}.") from None
