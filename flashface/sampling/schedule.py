"""FlashFace's noise schedule and the two tables of a sampling run.

The schedule is variance preserving (VP): x_t = α_t·x0 + σ_t·ε with α_t = √(1 − σ_t²) and
σ_t = √(1 − ᾱ_t) for the SD1.5 'scaled_linear' betas. The equivalent variance-exploding (VE)
noise level is σ/α; the official code interpolates between integer timesteps in log-VE space.

A sampling run uses two tables, as the official code does:

* the *solver sigmas*: VP sigmas at the (possibly fractional) discretized timesteps, obtained by
  interpolating log-VE sigmas, with a final 0 appended; the solver update uses these;
* the *model timesteps*: every sigma the solver asks about is turned back into a fractional
  timestep by inverse interpolation and rounded. The network sees that integer, and ε → x0
  uses the table values σ_t, α_t at that integer (`NoiseSchedule.coefficients`).

Both conversions run in float32 like the official code, so the rounding of half-way timesteps
(e.g. 832.5 in 'linspace' with 25 steps) comes out the same.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .noise_levels import ve_to_vp, vp_to_ve

DISCRETIZATIONS = ("trailing", "linspace", "leading")
SPACINGS = ("timesteps", "karras")
NUM_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
KARRAS_RHO = 7.0


def scaled_linear_betas(
    num_timesteps: int = NUM_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """β_i = linspace(√β_start, √β_end)², float64 (SD1.5's 'scaled_linear')."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


class NoiseSchedule:
    """The VP tables for t = 0 … T−1 and the conversions between timesteps and sigmas."""

    def __init__(self, num_timesteps: int = NUM_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END):
        betas = scaled_linear_betas(num_timesteps, beta_start, beta_end)
        self.num_timesteps = num_timesteps
        self.sigmas = torch.sqrt(1 - torch.cumprod(1 - betas, dim=0))  # float64, VP
        self.alphas = torch.sqrt(1 - self.sigmas**2)
        self._log_ve = vp_to_ve(self.sigmas).log().float()

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """VP sigmas at fractional timesteps (float32), interpolating log-VE sigmas."""
        t = torch.as_tensor(t, dtype=torch.float32)
        lower, upper, frac = t.floor().long(), t.ceil().long(), t.frac()
        log_ve = (1 - frac) * self._log_ve[lower] + frac * self._log_ve[upper]
        return ve_to_vp(log_ve.exp())

    def timestep_at(self, sigma) -> float:
        """Fractional timestep of one VP sigma: the inverse of `sigma_at`, clamped to [0, T−1]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if sigma >= 1:
            return float(self.num_timesteps - 1)
        log_ve = vp_to_ve(sigma).log()
        below = (self._log_ve <= log_ve).nonzero()
        lower = min(int(below[-1]) if len(below) else 0, self.num_timesteps - 2)
        frac = ((self._log_ve[lower] - log_ve) / (self._log_ve[lower] - self._log_ve[lower + 1])).clamp(0, 1)
        return float((1 - frac) * lower + frac * (lower + 1))

    def model_timestep(self, sigma) -> int:
        """The rounded integer timestep the network sees for a solver sigma (half to even)."""
        return int(torch.tensor(self.timestep_at(sigma), dtype=torch.float32).round())

    def coefficients(self, t: int) -> tuple[float, float]:
        """(σ_t, α_t) of the integer-t table, rounded to float32 as the official ε → x0 uses them."""
        return float(self.sigmas[t].float()), float(self.alphas[t].float())


def discretize(steps: int, discretization: str = "trailing", num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Fractional timesteps (float32, descending) for `steps` solver steps.

    'trailing' is what every FlashFace caller uses. Like the official code it calls arange with a
    fractional step, which yields steps + 1 values for a few step counts (61, 103, 121, 122 among
    those up to 200); the extra value is clamped to 0 and costs one extra model evaluation.
    """
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1, got {steps}.")
    last = num_timesteps - 1
    if discretization == "trailing":
        timesteps = torch.arange(last, -1, -num_timesteps / steps)
    elif discretization == "linspace":
        timesteps = torch.linspace(last, 0, steps)
    elif discretization == "leading":
        timesteps = torch.arange(0, num_timesteps, num_timesteps / steps).flip(0)
    else:
        raise InvalidInputError(
            f"unknown discretization {discretization!r}; choose one of {', '.join(DISCRETIZATIONS)}."
        )
    return timesteps.clamp(0, last).to(torch.float32)


def karras_sigmas(count: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """`count` VP sigmas from sigma_max down to sigma_min, spaced as Karras et al. (2022) in VE space."""
    ve_min, ve_max = (float(vp_to_ve(torch.tensor(s, dtype=torch.float64))) for s in (sigma_min, sigma_max))
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    ve = (ve_max ** (1 / rho) + ramp * (ve_min ** (1 / rho) - ve_max ** (1 / rho))) ** rho
    return ve_to_vp(ve).float()


def sampling_sigmas(
    schedule: NoiseSchedule, steps: int, discretization: str = "trailing", spacing: str = "timesteps"
) -> torch.Tensor:
    """Solver sigmas (VP, float32, descending, final 0 appended) of a sampling run.

    spacing 'timesteps' takes the sigmas at the discretized timesteps (official); 'karras' keeps
    their range and count but spaces them as Karras et al. in VE space. Either way the network's
    timesteps follow from the sigmas through `NoiseSchedule.model_timestep`.
    """
    sigmas = schedule.sigma_at(discretize(steps, discretization, schedule.num_timesteps))
    if spacing == "karras":
        sigmas = karras_sigmas(len(sigmas), float(sigmas[sigmas > 0].min()), float(sigmas.max()))
    elif spacing != "timesteps":
        raise InvalidInputError(f"unknown sigma spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    return torch.cat([sigmas, sigmas.new_zeros(1)])
