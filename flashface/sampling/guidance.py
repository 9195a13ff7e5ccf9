"""FlashFace's reference guidance: the denoiser the solvers call, numerically as the official code.

At each model call, with t the rounded model timestep of the solver's sigma:

* t > launch_timestep (early, noisy steps), or reference guidance c = 0: **2 branches**, rows
  [pos | neg], every row attending to the references with weight λ0 (λ once launched with c = 0);
  ε = ε_u + g·(ε_c − ε_u).
* otherwise: **3 branches**, rows [pos with references at λ | pos at weight 0 | neg at weight 0];
  ε = ε_u + g·(ε_c − ε_u) + c·(ε_r − ε_c).

Then the guide rescale ε ← ε·(φ·std(ε_c)/(std(ε) + 1e-12) + 1 − φ) with the unbiased std of each
sample, and x0 = (x − σ_t·ε)/α_t from the integer-t table. Rows are block-stacked (all samples
of a branch, then the next branch), as officially. The reference pass runs once per call and
its features serve every row; the UNet skips the reference attention of rows whose weight is 0.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from ..settings import GenerationSettings
from .schedule import NoiseSchedule


def three_branches(settings: GenerationSettings, timestep: int) -> bool:
    """Whether the call at `timestep` has the third branch (reference guidance launched)."""
    return timestep <= settings.launch_timestep and settings.reference_guidance_strength > 0


def branch_weights(settings: GenerationSettings, timestep: int, batch: int) -> torch.Tensor:
    """Reference attention weight per row for the branch layout used at `timestep`."""
    if three_branches(settings, timestep):
        return torch.tensor([settings.reference_feature_strength] * batch + [0.0] * (2 * batch))
    strength = (settings.reference_feature_strength_before_launch if timestep > settings.launch_timestep
                else settings.reference_feature_strength)
    return torch.full((2 * batch,), float(strength))


def rescale_guided(guided: torch.Tensor, conditional: torch.Tensor, guide_rescale: float) -> torch.Tensor:
    """Pull the guided prediction's per-sample std towards the conditional one's (arXiv:2305.08891)."""
    ratio = conditional.flatten(1).std(dim=1) / (guided.flatten(1).std(dim=1) + 1e-12)
    return guided * (guide_rescale * ratio + (1 - guide_rescale)).view(-1, *([1] * (guided.dim() - 1)))


class ReferenceGuidedDenoiser:
    """``denoiser(x, sigma) -> x0`` for B samples; plugs into every solver of `solvers`.

    positive/negative: text embeddings [B,77,C]; reference_latents [N,4,r,r] (already scaled by
    the VAE factor); mask [B,h,w] or [h,w] or None; `settings`: the guidance fields of a
    `GenerationSettings`; reference_context [N,77,C] defaults to the
    first negative embedding repeated per reference, as officially.
    `model_timesteps` records the integer timestep of every call.
    """

    def __init__(self, unet, schedule: NoiseSchedule, positive: torch.Tensor, negative: torch.Tensor,
                 reference_latents: torch.Tensor, mask: torch.Tensor | None = None,
                 settings: "GenerationSettings | None" = None,
                 reference_context: torch.Tensor | None = None):
        if positive.shape != negative.shape:
            raise InvalidInputError(f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} "
                                    "text embeddings must have the same shape [B,77,C].")
        if reference_latents.dim() != 4 or reference_latents.shape[0] == 0:
            raise InvalidInputError("FlashFace needs at least one reference face latent [N,4,r,r].")
        if mask is not None and mask.dim() == 2:
            mask = mask.expand(positive.shape[0], *mask.shape)
        self.unet = unet
        self.schedule = schedule
        self.settings = settings
        self.positive, self.negative, self.mask = positive, negative, mask
        self.reference_latents = reference_latents
        self.reference_context = (negative[:1].expand(len(reference_latents), -1, -1)
                                  if reference_context is None else reference_context)
        self.model_timesteps: list[int] = []

    def eps(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """The guided noise prediction at an integer model timestep."""
        batch = x.shape[0]
        if batch != self.positive.shape[0]:
            raise InvalidInputError(f"{batch} latents for {self.positive.shape[0]} text embeddings.")
        three = three_branches(self.settings, timestep)
        branches = 3 if three else 2
        contexts = [self.positive, self.positive, self.negative] if three else [self.positive, self.negative]
        references = self.unet.encode_references(self.reference_latents, timestep, self.reference_context)
        rows = branches * batch
        out = self.unet(
            x.repeat(branches, 1, 1, 1),
            torch.full((rows,), timestep, dtype=torch.long, device=x.device),
            torch.cat(contexts),
            None if self.mask is None else self.mask.repeat(branches, 1, 1),
            references,
            branch_weights(self.settings, timestep, batch),
        )
        g, c = self.settings.text_guidance, self.settings.reference_guidance_strength
        if three:
            with_references, conditional, unconditional = out.chunk(3)
            guided = unconditional + g * (conditional - unconditional) + c * (with_references - conditional)
        else:
            conditional, unconditional = out.chunk(2)
            guided = unconditional + g * (conditional - unconditional)
        return rescale_guided(guided, conditional, self.settings.guide_rescale)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        timestep = self.schedule.model_timestep(sigma)
        self.model_timesteps.append(timestep)
        sigma_t, alpha_t = self.schedule.coefficients(timestep)
        return (x - sigma_t * self.eps(x, timestep)) / alpha_t
