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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import ContractError, InvalidInputError
from ..models.row_plan import RowPlan
from ..people import PeopleLayout
from ..settings import OFFICIAL, GenerationSettings
from .mask import LATENT_FACTOR
from .noise_levels import ve_scale, ve_to_vp
from .schedule import NoiseSchedule

if TYPE_CHECKING:
    from ..models.block_additions import BlockAdditions


# What a row of a model call is (ComfyUI's cond / uncond chunk indices, then ours).
POSITIVE, NEGATIVE, POSITIVE_WITH_REFERENCES = 0, 1, 2


def three_branches(settings: GenerationSettings, timestep: int) -> bool:
    """Whether the call at `timestep` has the third branch (reference guidance launched)."""
    return timestep <= settings.launch_timestep and settings.reference_guidance_strength > 0


def branch_chunks(settings: GenerationSettings, timestep: int) -> tuple[int, ...]:
    """The kinds of the official branches of a call: (pos + references, pos, neg) or (pos, neg)."""
    if three_branches(settings, timestep):
        return (POSITIVE_WITH_REFERENCES, POSITIVE, NEGATIVE)
    return (POSITIVE, NEGATIVE)


def row_weights(settings: GenerationSettings, timestep: int, kinds: Sequence[int]) -> list[float]:
    """Reference attention weight of each row of a call at `timestep`, by the row's kind: once
    launched the positive row with references at λ and the others at 0; before, every row at λ0
    (at λ when launched without reference guidance)."""
    if three_branches(settings, timestep):
        return [settings.reference_feature_strength if kind == POSITIVE_WITH_REFERENCES else 0.0 for kind in kinds]
    if POSITIVE_WITH_REFERENCES in kinds:
        raise ContractError(
            f"no row with references is computed at timestep {timestep}: reference guidance is not running there."
        )
    strength = (
        settings.reference_feature_strength_before_launch
        if timestep > settings.launch_timestep
        else settings.reference_feature_strength
    )
    return [strength] * len(kinds)


def row_plan(
    settings: GenerationSettings, timestep: int, chunks: Sequence[int], batch: int, one_prompt_per_side: bool = True
) -> RowPlan:
    """The rows of a call at `timestep`: `chunks` (kinds) of `batch` rows each, stacked, row b of
    every chunk the same sample. With one prompt per side the positive chunks (with and without
    references) have the same text; otherwise (several conditionings on a side) each chunk is
    taken to have its own."""
    kinds = [kind for kind in chunks for _ in range(batch)]
    texts = (
        [POSITIVE if kind == POSITIVE_WITH_REFERENCES else kind for kind in chunks]
        if one_prompt_per_side
        else list(range(len(chunks)))
    )
    return RowPlan.of_chunks(texts, batch, row_weights(settings, timestep, kinds))


def rescale_guided(guided: torch.Tensor, conditional: torch.Tensor, guide_rescale: float) -> torch.Tensor:
    """Pull the guided prediction's per-sample std towards the conditional one's (arXiv:2305.08891)."""
    ratio = conditional.flatten(1).std(dim=1) / (guided.flatten(1).std(dim=1) + 1e-12)
    return guided * (guide_rescale * ratio + (1 - guide_rescale)).view(-1, *([1] * (guided.dim() - 1)))


def guided_eps(
    positive: torch.Tensor,
    negative: torch.Tensor,
    with_references: torch.Tensor | None,
    text_guidance: float,
    settings: GenerationSettings,
) -> torch.Tensor:
    """The official combination of the branch predictions: ε_u + g(ε_c − ε_u) [+ c(ε_r − ε_c)],
    then the guide rescale towards ε_c."""
    guided = negative + text_guidance * (positive - negative)
    if with_references is not None:
        guided = guided + settings.reference_guidance_strength * (with_references - positive)
    return rescale_guided(guided, positive, settings.guide_rescale)


@dataclass(frozen=True)
class RowGuidance:
    """FlashFace's reference guidance for a sampler that picks and batches the rows of a step itself
    (ComfyUI's KSampler): `denoise` computes any rows of one step, each of a kind (POSITIVE,
    NEGATIVE, POSITIVE_WITH_REFERENCES), with one reference pass for all of them; `combine` turns
    the branch predictions into the guided one, officially. Latents and sigmas are variance
    exploding (y = x/α, s = σ/α), as such samplers use them; x0 is the same in both.

    reference_latents [N,4,r,r] (scaled) and reference_context [N,77,C] (officially the negative
    prompt); `settings` gives λ, λ0, c, the launch timestep and the guide rescale; `people` where
    each person is and which references are theirs (default: one person at the settings' face
    box). Nothing changes between calls.
    """

    reference_latents: torch.Tensor
    reference_context: torch.Tensor
    settings: GenerationSettings = OFFICIAL
    people: PeopleLayout | None = None
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    mask: torch.Tensor | None = None  # the face-position channel [B,h,w] as given, in place of the people's
    _places: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see `place`

    def __post_init__(self):
        if self.reference_latents.dim() != 4 or self.reference_latents.shape[0] == 0:
            raise ContractError("FlashFace needs at least one reference face latent [N,4,r,r].")
        if self.reference_context.shape[0] != self.reference_latents.shape[0]:
            raise ContractError(
                f"{self.reference_context.shape[0]} reference contexts for "
                f"{self.reference_latents.shape[0]} references."
            )
        if sum(self.layout.reference_counts) != len(self.reference_latents):
            raise ContractError(
                f"The people have {sum(self.layout.reference_counts)} references between them, "
                f"but {len(self.reference_latents)} reference latents were given."
            )

    @functools.cached_property
    def layout(self) -> PeopleLayout:
        """The people given, or one person at the settings' face box."""
        if self.people is not None:
            return self.people
        return PeopleLayout.one_person(self.settings.face_box, None, len(self.reference_latents))

    def timestep(self, sigma) -> int:
        """The official integer model timestep of a VE sigma (a finite, non-negative number)."""
        level = float(sigma)
        if not math.isfinite(level) or level < 0:
            raise InvalidInputError(
                f"A noise level (sigma) of {level} was given to FlashFace: sigmas must be finite, "
                "non-negative numbers. Check the SIGMAS given to the sampler."
            )
        return self.schedule.model_timestep(ve_to_vp(level))

    def with_references_row(self, sigma) -> bool:
        """Whether the step at `sigma` needs the third branch (reference guidance launched)."""
        return three_branches(self.settings, self.timestep(sigma))

    def place(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For latents of h×w cells: the people's face-position channel [h,w] and the regions of
        several people (None for one), on the CPU; computed once per size (and checked then: a
        person with no place of their own is refused)."""
        if (h, w) not in self._places:
            width, height = LATENT_FACTOR * w, LATENT_FACTOR * h
            self._places[h, w] = (self.layout.face_position(width, height), self.layout.regions(width, height))
        return self._places[h, w]

    def latent_mask(self, rows: int, h: int, w: int, device) -> torch.Tensor:
        """The face-position channel [rows,h,w] for latents of h×w cells: the people's, or the mask
        given (one per sample, repeated for each chunk of rows)."""
        if self.mask is not None:
            return self.mask.to(device).repeat(rows // self.mask.shape[0], 1, 1)
        return self.place(h, w)[0].to(device).expand(rows, h, w)

    @torch.no_grad()
    def denoise(
        self,
        unet,
        x: torch.Tensor,
        sigma,
        context: torch.Tensor,
        chunks: Sequence[int],
        additions: BlockAdditions | None = None,
        one_prompt_per_side: bool = True,
    ) -> torch.Tensor:
        """x0 [R,4,h,w] of VE latents x [R,4,h,w] at `sigma` (one level, or one per row, all equal).
        The rows are `chunks` of equal size stacked (ComfyUI's cond_or_uncond), each of a kind, row
        b of every chunk the same sample, each row with text `context[r]` (see `row_plan` for
        `one_prompt_per_side`); `additions`: control residuals and block patches for the main pass
        (see `BlockAdditions`)."""
        levels = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        level = float(levels[0])
        t = self.timestep(level)
        if len(levels) > 1 and not bool((levels == levels[0]).all()):
            raise InvalidInputError("FlashFace computes the rows of one step together: give them one sigma.")
        if not chunks or x.shape[0] % len(chunks):
            raise ContractError(f"{x.shape[0]} latent rows do not make {len(chunks)} equal chunks.")
        device = x.device
        references = unet.encode_references(
            self.reference_latents.to(device),
            t,
            self.reference_context.to(device),
            self.layout.owners,
            self.layout.copies,
        )
        h, w = x.shape[2:]
        plan = row_plan(self.settings, t, chunks, x.shape[0] // len(chunks), one_prompt_per_side)
        eps = unet(
            x * ve_scale(level),
            torch.full((plan.rows,), t, dtype=torch.long, device=device),
            context,
            self.latent_mask(plan.rows, h, w, device),
            references,
            plan,
            additions,
            regions=self.place(h, w)[1],
        )
        sigma_t, alpha_t = self.schedule.coefficients(t)
        return (x * ve_scale(level) - sigma_t * eps.to(torch.promote_types(x.dtype, torch.float32))) / alpha_t

    def combine(
        self,
        x: torch.Tensor,
        sigma,
        positive: torch.Tensor,
        negative: torch.Tensor,
        with_references: torch.Tensor | None,
        text_guidance: float,
    ) -> torch.Tensor:
        """The guided x0 from the branch x0s (see `guided_eps`), computed through ε in float64
        (float32 on MPS, which has no float64)."""
        level = float(torch.as_tensor(sigma, dtype=torch.float32).flatten()[0])
        sigma_t, alpha_t = self.schedule.coefficients(self.timestep(level))
        precise = torch.float32 if x.device.type == "mps" else torch.float64
        x_vp = x.to(precise) * ve_scale(level)

        def eps(x0: torch.Tensor) -> torch.Tensor:
            return (x_vp - alpha_t * x0.to(precise)) / sigma_t

        guided = guided_eps(
            eps(positive),
            eps(negative),
            None if with_references is None else eps(with_references),
            text_guidance,
            self.settings,
        )
        return ((x_vp - sigma_t * guided) / alpha_t).to(x.dtype)


class ReferenceGuidedDenoiser:
    """``denoiser(x, sigma) -> x0`` of VP latents for the solvers: the Generator's adapter of
    `RowGuidance`, the one guided step. Each call evaluates the step's official branches in one UNet
    call (block-stacked: all samples of a branch, then the next) and combines them.

    positive/negative: text embeddings [B,77,C]; reference_latents [N,4,r,r] (scaled by the VAE
    factor); `people`: where each person is and which references are theirs, with the copies of the
    official padding (default: one person at the settings' face box); `mask` [B,h,w] a face-position
    channel given as is (else the people's); reference_context [N,77,C] defaults to the first
    negative embedding repeated per reference, as officially. `model_timesteps` records the integer
    timestep of every call.
    """

    def __init__(
        self,
        unet,
        schedule: NoiseSchedule,
        positive: torch.Tensor,
        negative: torch.Tensor,
        reference_latents: torch.Tensor,
        mask: torch.Tensor | None = None,
        settings: GenerationSettings = OFFICIAL,
        reference_context: torch.Tensor | None = None,
        *,
        people: PeopleLayout | None = None,
    ):
        if positive.shape != negative.shape:
            raise ContractError(
                f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} "
                "text embeddings must have the same shape [B,77,C]."
            )
        if mask is not None and mask.dim() == 2:
            mask = mask.expand(positive.shape[0], *mask.shape)
        self.unet, self.positive, self.negative, self.settings = unet, positive, negative, settings
        context = (
            negative[:1].expand(len(reference_latents), -1, -1) if reference_context is None else reference_context
        )
        self.guidance = RowGuidance(reference_latents, context, settings, people, schedule, mask)
        self.model_timesteps: list[int] = []

    def x0(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The guided x0 of VP latents x [B,4,h,w] at VP noise level `sigma`."""
        batch = x.shape[0]
        if batch != self.positive.shape[0]:
            raise ContractError(f"{batch} latents for {self.positive.shape[0]} text embeddings.")
        alpha = math.sqrt(1 - sigma**2)
        y, level = x / alpha, sigma / alpha  # the VE view RowGuidance works in
        timestep = self.guidance.timestep(level)
        self.model_timesteps.append(timestep)
        chunks = branch_chunks(self.settings, timestep)
        context = torch.cat([self.negative if kind == NEGATIVE else self.positive for kind in chunks])
        x0 = self.guidance.denoise(self.unet, y.repeat(len(chunks), 1, 1, 1), level, context, chunks)
        branches = dict(zip(chunks, x0.chunk(len(chunks))))
        return self.guidance.combine(
            y,
            level,
            branches[POSITIVE],
            branches[NEGATIVE],
            branches.get(POSITIVE_WITH_REFERENCES),
            self.settings.text_guidance,
        )

    __call__ = x0
