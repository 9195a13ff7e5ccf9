"""Reference guidance: branch layout and switch, one reference pass per call, and the sampler's
call (one reference pass, shared rows, skipped zero-weight rows) against a straightforward
per-branch evaluation (tests/straightforward_unet.py) on a random tiny UNet."""

from types import SimpleNamespace

import pytest
import torch

from flashface.errors import ContractError, InvalidInputError
from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.unet_loading import load_unet
from flashface.sampling.guidance import (
    NEGATIVE,
    POSITIVE,
    POSITIVE_WITH_REFERENCES,
    ReferenceGuidedDenoiser,
    RowGuidance,
    row_plan,
)
from flashface.sampling.mask import box_mask
from flashface.sampling.noise_levels import vp_to_ve
from flashface.sampling.schedule import NoiseSchedule, sampling_sigmas
from flashface.sampling.solvers import get_solver
from flashface.settings import GenerationSettings
from straightforward_unet import straightforward_eps as straightforward_unet_eps
from tiny_unet import tiny_unet_state_dict

CONTEXT_DIM = 32


@pytest.fixture(scope="module")
def tiny_unet():
    return load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed=11, context_dim=CONTEXT_DIM)), num_heads=2)


def random_inputs(batch=2, references=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, size, size)
    for b in range(batch):
        masks[b, b : b + 4, 2:6] = 1  # a different face square per sample
    return SimpleNamespace(
        x=torch.randn(batch, 4, size, size, generator=g),
        positive=torch.randn(batch, 77, CONTEXT_DIM, generator=g),
        negative=torch.randn(batch, 77, CONTEXT_DIM, generator=g),
        references=torch.randn(references, 4, 7, 7, generator=g),
        mask=masks,
    )


def straightforward_eps(unet, inputs, settings, timestep):
    """Each branch its own reference pass and model call, computed as the formulas read, the
    guidance spelled out."""
    batch = inputs.x.shape[0]
    reference_context = inputs.negative[:1].repeat(len(inputs.references), 1, 1)

    def branch(context, weight):
        return straightforward_unet_eps(
            unet,
            inputs.x,
            torch.full((batch,), timestep),
            context,
            inputs.mask,
            inputs.references,
            reference_context,
            [weight] * batch,
        )

    g, c, phi = settings.text_guidance, settings.reference_guidance_strength, settings.guide_rescale
    if timestep > settings.launch_timestep:
        cond = branch(inputs.positive, settings.reference_feature_strength_before_launch)
        uncond = branch(inputs.negative, settings.reference_feature_strength_before_launch)
        guided = uncond + g * (cond - uncond)
    else:
        with_refs = branch(inputs.positive, settings.reference_feature_strength)
        cond = branch(inputs.positive, 0.0)
        uncond = branch(inputs.negative, 0.0)
        guided = uncond + g * (cond - uncond) + c * (with_refs - cond)
    std_cond = torch.stack([row.flatten().std(unbiased=True) for row in cond])
    std_guided = torch.stack([row.flatten().std(unbiased=True) for row in guided])
    return guided * (phi * std_cond / (std_guided + 1e-12) + 1 - phi)[:, None, None, None]


@pytest.mark.parametrize("timestep", [999, 751, 750, 400, 0])
def test_optimized_guidance_equals_straightforward(tiny_unet, timestep):
    schedule = NoiseSchedule()
    settings = GenerationSettings(
        text_guidance=6.0,
        reference_guidance_strength=2.5,
        reference_feature_strength=1.1,
        reference_feature_strength_before_launch=0.85,
        launch_timestep=750,
    )
    inputs = random_inputs()
    denoiser = ReferenceGuidedDenoiser(
        tiny_unet, schedule, inputs.positive, inputs.negative, inputs.references, inputs.mask, settings
    )
    x0 = denoiser(inputs.x, float(schedule.sigmas[timestep].float()))
    assert denoiser.model_timesteps == [timestep]
    eps = straightforward_eps(tiny_unet, inputs, settings, timestep)
    # float32 rounding of differently batched matmuls, amplified by the guidance scales
    sigma, alpha = schedule.sigmas[timestep], (1 - schedule.sigmas[timestep] ** 2).sqrt()
    torch.testing.assert_close(x0, (inputs.x - float(sigma) * eps) / float(alpha), atol=5e-5 / float(alpha), rtol=1e-5)


def test_samples_are_independent_rows(tiny_unet):
    """A batch of 3 gives each sample what a batch of 1 gives it (row order of every input is right)."""
    schedule = NoiseSchedule()
    sigmas = sampling_sigmas(schedule, 4)
    inputs = random_inputs(batch=3)
    together = get_solver("ddim")(
        ReferenceGuidedDenoiser(
            tiny_unet,
            schedule,
            inputs.positive,
            inputs.negative,
            inputs.references,
            inputs.mask,
            GenerationSettings(launch_timestep=600),
        ),
        inputs.x,
        sigmas,
    )
    for b in range(3):
        # the reference context is the *first* negative embedding for every sample
        alone = ReferenceGuidedDenoiser(
            tiny_unet,
            schedule,
            inputs.positive[b : b + 1],
            inputs.negative[b : b + 1],
            inputs.references,
            inputs.mask[b : b + 1],
            GenerationSettings(launch_timestep=600),
            reference_context=inputs.negative[:1].expand(3, -1, -1),
        )
        # float32 rounding differs between batch shapes (x0 = (x − σε)/α amplifies it ~15× at t=999);
        # a row mix-up would differ by O(1)
        torch.testing.assert_close(
            get_solver("ddim")(alone, inputs.x[b : b + 1], sigmas), together[b : b + 1], atol=1e-3, rtol=1e-3
        )


class RecordingUNet:
    """Stands in for the UNet: records every call, predicts zero noise."""

    def __init__(self):
        self.reference_passes, self.calls = [], []

    def encode_references(self, latents, t, context, owners=None, copies=None):
        self.reference_passes.append((t, latents.shape[0], context.clone()))
        return "features"

    def __call__(self, x, t, context, mask, references, rows, additions=None, regions=None):
        assert references == "features" and regions is None
        self.calls.append(
            SimpleNamespace(
                rows=x.shape[0],
                t=t.tolist(),
                context=context,
                mask=mask,
                plan=rows,
                reference_weights=list(rows.weights),
            )
        )
        return torch.zeros_like(x)


@pytest.mark.parametrize("steps, two_branch, three_branch", [(35, 9, 26), (25, 7, 18)])
def test_branch_switch_at_the_launch_timestep(steps, two_branch, three_branch):
    schedule, unet, batch = NoiseSchedule(), RecordingUNet(), 2
    inputs = random_inputs(batch=batch, references=4)
    settings = GenerationSettings(
        reference_feature_strength=1.2, reference_feature_strength_before_launch=0.85, launch_timestep=750
    )
    denoiser = ReferenceGuidedDenoiser(
        unet, schedule, inputs.positive, inputs.negative, inputs.references, inputs.mask, settings
    )
    get_solver("ddim")(denoiser, inputs.x, sampling_sigmas(schedule, steps))
    assert len(unet.reference_passes) == len(unet.calls) == steps  # one reference pass per model call
    rows = [call.rows for call in unet.calls]
    assert rows == [2 * batch] * two_branch + [3 * batch] * three_branch
    for call, timestep in zip(unet.calls, denoiser.model_timesteps):
        assert call.t == [timestep] * call.rows
        if call.rows == 2 * batch:
            assert timestep > 750
            assert call.reference_weights == pytest.approx([0.85] * 4)
            assert torch.equal(call.context, torch.cat([inputs.positive, inputs.negative]))
        else:
            assert timestep <= 750
            assert call.reference_weights == pytest.approx([1.2, 1.2, 0, 0, 0, 0])
            # both positive branches have the positive prompt: the plan says so
            assert call.plan.samples == (0, 1) * 3 and call.plan.texts == (0, 0, 0, 0, 1, 1)
            assert torch.equal(call.context, torch.cat([inputs.positive, inputs.positive, inputs.negative]))
        assert torch.equal(call.mask, inputs.mask.repeat(call.rows // batch, 1, 1))
    for _, count, context in unet.reference_passes:
        assert count == 4 and torch.equal(context, inputs.negative[:1].expand(4, -1, -1))


def test_without_reference_guidance_every_call_has_two_branches():
    schedule, unet = NoiseSchedule(), RecordingUNet()
    inputs = random_inputs(batch=1)
    settings = GenerationSettings(
        reference_guidance_strength=0.0, reference_feature_strength=1.3, reference_feature_strength_before_launch=0.85
    )
    denoiser = ReferenceGuidedDenoiser(
        unet, schedule, inputs.positive, inputs.negative, inputs.references, None, settings
    )
    get_solver("ddim")(denoiser, inputs.x, sampling_sigmas(schedule, 10))
    face_position = box_mask(settings.face_box, 64, 64)  # no mask given: the one person's, at the settings' box
    assert all(call.rows == 2 and torch.equal(call.mask, face_position.expand(2, -1, -1)) for call in unet.calls)
    assert [call.reference_weights[0] for call in unet.calls] == pytest.approx(
        [0.85 if t > 750 else 1.3 for t in denoiser.model_timesteps]
    )


def test_guidance_and_rescale_formula():
    schedule = NoiseSchedule()

    class ScalingUNet(RecordingUNet):
        """Branch rows [with refs | cond | uncond] of one sample predict 3x, x and 0."""

        def __call__(self, x, t, context, mask, references, rows, additions=None, regions=None):
            return x * torch.tensor([3.0, 1.0, 0.0]).view(3, 1, 1, 1)

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x[0, 0] += 5  # the std is taken over C·H·W of the sample
    settings = GenerationSettings(
        text_guidance=3.0, reference_guidance_strength=2.0, launch_timestep=750, guide_rescale=0.5
    )
    denoiser = ReferenceGuidedDenoiser(
        ScalingUNet(), schedule, torch.zeros(1, 77, 8), torch.zeros(1, 77, 8), torch.zeros(1, 4, 7, 7), None, settings
    )
    sigma = float(schedule.sigmas[500])
    alpha = (1 - sigma**2) ** 0.5
    x0 = denoiser(x, sigma)
    assert denoiser.model_timesteps == [500]
    # guided = 0 + 3·(x − 0) + 2·(3x − x) = 7x; the rescale factor is 0.5·std(x)/std(7x) + 0.5 = 0.5/7 + 0.5
    torch.testing.assert_close((x - alpha * x0) / sigma, 7 * x * (0.5 / 7 + 0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("timestep", [900, 400], ids=["before launch", "launched"])
def test_row_guidance_gives_the_denoisers_x0_however_the_rows_are_batched(tiny_unet, timestep):
    """What ComfyUI's samplers get through FlashFace Apply: rows evaluated by kind (all in one call,
    or each kind in a call of its own), combined afterwards, equal the Generator's denoiser."""
    inputs = random_inputs(batch=2)
    settings = GenerationSettings(text_guidance=6.0, face_box=(0.25, 0.25, 0.75, 0.75))
    schedule = NoiseSchedule()
    sigma = float(schedule.sigmas[timestep])  # VP
    mask = box_mask(settings.face_box, 64, 64)
    reference_context = inputs.negative[:1].expand(len(inputs.references), -1, -1)
    official = ReferenceGuidedDenoiser(
        tiny_unet, schedule, inputs.positive, inputs.negative, inputs.references, mask, settings
    )(inputs.x, sigma)
    guidance = RowGuidance(inputs.references, reference_context, settings, schedule=schedule)
    level = vp_to_ve(sigma)
    y = inputs.x / (1 - sigma**2) ** 0.5
    kinds = [POSITIVE, NEGATIVE] + ([POSITIVE_WITH_REFERENCES] if guidance.with_references_row(level) else [])
    assert (len(kinds) == 3) == (timestep <= settings.launch_timestep)
    contexts = {POSITIVE: inputs.positive, NEGATIVE: inputs.negative, POSITIVE_WITH_REFERENCES: inputs.positive}
    together = guidance.denoise(
        tiny_unet,
        y.repeat(len(kinds), 1, 1, 1),
        torch.full((2 * len(kinds),), level),
        torch.cat([contexts[kind] for kind in kinds]),
        kinds,
    ).chunk(len(kinds))
    apart = [guidance.denoise(tiny_unet, y, level, contexts[kind], [kind]) for kind in kinds]
    # x0 = (x - sigma eps) / alpha scales the fp32 rounding of eps (which depends on the batch size
    # through the kernels picked) by sigma / alpha, about 4.7 at t = 900.
    for x0_together, x0_apart in zip(together, apart):
        torch.testing.assert_close(x0_together, x0_apart, atol=1e-4, rtol=1e-4)
    combined = guidance.combine(y, level, *together[:2], together[2] if len(together) > 2 else None, 6.0)
    torch.testing.assert_close(combined, official, atol=1e-4, rtol=1e-4)


def test_row_guidance_refuses_a_references_row_before_launch_and_mixed_sigmas(tiny_unet):
    inputs = random_inputs(batch=1)
    guidance = RowGuidance(inputs.references, inputs.negative.expand(len(inputs.references), -1, -1))
    level = vp_to_ve(float(NoiseSchedule().sigmas[950]))
    with pytest.raises(ContractError, match="no row with references"):
        guidance.denoise(tiny_unet, inputs.x, level, inputs.positive, [POSITIVE_WITH_REFERENCES])
    with pytest.raises(InvalidInputError, match="one sigma"):
        guidance.denoise(
            tiny_unet,
            inputs.x.repeat(2, 1, 1, 1),
            torch.tensor([level, level / 2]),
            inputs.positive.repeat(2, 1, 1),
            [POSITIVE, NEGATIVE],
        )


def test_the_row_plan_shares_the_positive_text_only_with_one_prompt_per_side():
    """ComfyUI batches chunks in any order; a side with several conditionings (Conditioning Combine)
    gives chunks of one kind with different texts, so nothing is shared then."""
    settings = GenerationSettings(reference_feature_strength=1.2, launch_timestep=750)
    chunks = [POSITIVE, NEGATIVE, POSITIVE_WITH_REFERENCES]
    shared = row_plan(settings, 400, chunks, batch=2)
    assert shared.samples == (0, 1, 0, 1, 0, 1) and shared.weights == (0.0, 0.0, 0.0, 0.0, 1.2, 1.2)
    assert shared.texts == (POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, POSITIVE, POSITIVE)
    apart = row_plan(settings, 400, chunks, batch=2, one_prompt_per_side=False)
    assert len(set(apart.texts)) == 3 and apart.samples == shared.samples
