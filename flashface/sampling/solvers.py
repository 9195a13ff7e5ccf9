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
that change of variable DDIM is exactly the Euler method, which the tests use as a check.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from ..errors import GenerationCancelled, InvalidInputError

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]
CancelCheck = Callable[[], bool]


def _steps(sigmas, should_cancel: CancelCheck | None) -> Iterator[int]:
    """Step indices 0 … len(sigmas)−2, checking for cancellation before each."""
    for i in range(len(sigmas) - 1):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"Generation cancelled before step {i + 1} of {len(sigmas) - 1}.")
        yield i


def _report(callback: StepCallback | None, i: int, sigmas, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(i, len(sigmas) - 1, x0)


def _float_sigmas(sigmas) -> list[float]:
    values = [float(s) for s in sigmas]
    if len(values) < 2 or values[-1] != 0 or not 0 < values[0] < 1:
        raise InvalidInputError("Solver sigmas must be VP noise levels in (0, 1) ending in 0; "
                                "build them with flashface.sampling.schedule.sampling_sigmas.")
    return values


def _noise(like: torch.Tensor, generator: torch.Generator | None, solver: str) -> torch.Tensor:
    """Unit Gaussian noise drawn from `generator` (on its device), moved to `like`'s device."""
    if generator is None:
        raise InvalidInputError(f"The {solver} solver is stochastic: pass a torch.Generator for its noise.")
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(like.device, like.dtype)


def ve_sigma(vp_sigma: float) -> float:
    """σ/α for a VP sigma in [0, 1)."""
    return vp_sigma / math.sqrt(1 - vp_sigma * vp_sigma)


def vp_sigma(ve: float) -> float:
    """The VP sigma of a VE noise level s: s/√(1 + s²)."""
    return ve / math.sqrt(1 + ve * ve)


def _ve_denoiser(denoise: Denoiser) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """x0 prediction for VE latents y at VE level s, through the VP model."""
    def denoise_ve(y: torch.Tensor, s: float) -> torch.Tensor:
        alpha = 1 / math.sqrt(1 + s * s)
        return denoise(y * alpha, s * alpha)
    return denoise_ve


def _ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """(s_down, s_up): deterministic step to s_down, then fresh noise of std s_up (VE)."""
    if s_next == 0 or eta == 0:
        return s_next, 0.0
    s_up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - s_up ** 2), s_up


@torch.no_grad()
def ddim(denoise: Denoiser, x: torch.Tensor, sigmas, *, callback: StepCallback | None = None,
         should_cancel: CancelCheck | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Official DDIM (η = 0): x ← α_{i+1}·x0 + σ_{i+1}·(x − α_i·x0)/σ_i."""
    sigmas = _float_sigmas(sigmas)
    for i in _steps(sigmas, should_cancel):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        _report(callback, i, sigmas, x0)
        eps = (x - math.sqrt(1 - sigma ** 2) * x0) / sigma
        x = math.sqrt(1 - sigma_next ** 2) * x0 + sigma_next * eps
    return x


def _in_ve(sample_ve):
    """Run a VE solver body on VP inputs: y = x/α₀ in, x = y out (the last sigma is 0)."""
    def solver(denoise: Denoiser, x: torch.Tensor, sigmas, *, callback: StepCallback | None = None,
               should_cancel: CancelCheck | None = None, generator: torch.Generator | None = None,
               **options) -> torch.Tensor:
        vp = _float_sigmas(sigmas)
        ve = [ve_sigma(s) for s in vp]
        y = x / math.sqrt(1 - vp[0] ** 2)
        with torch.no_grad():
            return sample_ve(_ve_denoiser(denoise), y, ve, _steps(ve, should_cancel),
                             lambda i, x0: _report(callback, i, ve, x0), generator, **options)
    solver.__name__ = sample_ve.__name__
    solver.__doc__ = sample_ve.__doc__
    return solver


@_in_ve
def euler(denoise, y, s, steps, report, generator, s_churn: float = 0.0, s_tmin: float = 0.0,
          s_tmax: float = math.inf, s_noise: float = 1.0):
    """Euler (Karras et al. 2022, Alg. 2). Without churn it equals DDIM; churn > 0 re-noises
    each step with noise from the generator (the VE levels s_tmin…s_tmax get churned)."""
    total = len(s) - 1
    for i in steps:
        gamma = min(s_churn / total, 2 ** 0.5 - 1) if s_tmin <= s[i] <= s_tmax else 0.0
        s_hat = s[i] * (1 + gamma)
        if gamma > 0:
            y = y + _noise(y, generator, "euler") * s_noise * math.sqrt(s_hat ** 2 - s[i] ** 2)
        x0 = denoise(y, s_hat)
        report(i, x0)
        y = y + (y - x0) / s_hat * (s[i + 1] - s_hat)
    return y


def _euler_step(denoise, y, slope, s: float, s_target: float):
    return y + slope * (s_target - s)


def _dpm_2_step(denoise, y, slope, s: float, s_target: float):
    """DPM-Solver-2 from s to s_target: midpoint in log s; Euler when s_target is 0."""
    if s_target == 0:
        return _euler_step(denoise, y, slope, s, s_target)
    s_mid = math.exp((math.log(s) + math.log(s_target)) / 2)
    y_mid = y + slope * (s_mid - s)
    return y + (y_mid - denoise(y_mid, s_mid)) / s_mid * (s_target - s)


def _ancestral_loop(denoise, y, s, steps, report, generator, eta, s_noise, step, name):
    """Per step: a deterministic `step` down to s_down, then fresh noise of std s_up (none if eta = 0)."""
    for i in steps:
        x0 = denoise(y, s[i])
        report(i, x0)
        s_down, s_up = _ancestral_split(s[i], s[i + 1], eta)
        y = step(denoise, y, (y - x0) / s[i], s[i], s_down)
        if s_up > 0:
            y = y + _noise(y, generator, name) * s_noise * s_up
    return y


@_in_ve
def euler_ancestral(denoise, y, s, steps, report, generator, eta: float = 1.0, s_noise: float = 1.0):
    """Euler step down to s_down, then fresh noise up to the next level (stochastic)."""
    return _ancestral_loop(denoise, y, s, steps, report, generator, eta, s_noise, _euler_step, "euler_ancestral")


@_in_ve
def heun(denoise, y, s, steps, report, generator):
    """Heun's 2nd-order method (Karras et al. 2022); Euler on the last step. Two evaluations per step."""
    for i in steps:
        x0 = denoise(y, s[i])
        report(i, x0)
        slope = (y - x0) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            y = y + slope * dt
        else:
            y_next = y + slope * dt
            slope_next = (y_next - denoise(y_next, s[i + 1])) / s[i + 1]
            y = y + (slope + slope_next) / 2 * dt
    return y


@_in_ve
def dpm_2(denoise, y, s, steps, report, generator):
    """DPM-Solver-2 (midpoint in log sigma), as k-diffusion's sample_dpm_2; Euler on the last step."""
    return _ancestral_loop(denoise, y, s, steps, report, generator, 0.0, 1.0, _dpm_2_step, "dpm_2")


@_in_ve
def dpm_2_ancestral(denoise, y, s, steps, report, generator, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver-2 down to s_down, then fresh noise up to the next level (stochastic)."""
    return _ancestral_loop(denoise, y, s, steps, report, generator, eta, s_noise, _dpm_2_step, "dpm_2_ancestral")


def _dpmpp_2m_loop(denoise, y, s, steps, report, generator, eta, s_noise, name):
    """DPM-Solver++(2M) in its SDE form (midpoint variant); with eta = 0 it is the ODE solver."""
    previous_x0, previous_h = None, None
    for i in steps:
        x0 = denoise(y, s[i])
        report(i, x0)
        if s[i + 1] == 0:
            y = x0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            y = (s[i + 1] / s[i]) * math.exp(-eta_h) * y - math.expm1(-h - eta_h) * x0
            if previous_x0 is not None:
                y = y - 0.5 * math.expm1(-h - eta_h) * (h / previous_h) * (x0 - previous_x0)
            if eta > 0:
                y = y + _noise(y, generator, name) * s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
            previous_h = h
        previous_x0 = x0
    return y


@_in_ve
def dpmpp_2m(denoise, y, s, steps, report, generator):
    """DPM-Solver++(2M): multistep, one evaluation per step, 2nd order from the second step."""
    return _dpmpp_2m_loop(denoise, y, s, steps, report, generator, 0.0, 1.0, "dpmpp_2m")


@_in_ve
def dpmpp_2m_sde(denoise, y, s, steps, report, generator, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2M) SDE, midpoint variant; Gaussian noise from the generator at every step."""
    return _dpmpp_2m_loop(denoise, y, s, steps, report, generator, eta, s_noise, "dpmpp_2m_sde")


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
STOCHASTIC_SOLVERS = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2m_sde"})


def get_solver(name: str):
    """The solver function registered under `name`."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise InvalidInputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}.") from None
