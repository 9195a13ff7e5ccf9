"""Whole sampling loops against the official code (fixture cases of kind "sampler")."""

import pytest
import torch

from flashface.models.unet import load_unet
from flashface.sampling.guidance import GuidanceSettings, ReferenceGuidedDenoiser
from flashface.sampling.schedule import NoiseSchedule, sampling_sigmas
from flashface.sampling.solvers import STOCHASTIC_SOLVERS, get_solver
from tests.parity import cases


@pytest.mark.parametrize("case", cases("sampler"))
def test_sampling_loop_matches_official(case):
    config = case.config
    assert config["solver"] not in STOCHASTIC_SOLVERS, "parity is only defined for deterministic solvers"
    assert config.get("eta", 0.0) == 0.0, "only DDIM with eta = 0 is implemented"
    inputs, expected = case.inputs, case.expected
    assert inputs["noise"].shape[0] == config["batch"]
    assert inputs["reference_latents"].shape[0] == config["num_references"]
    unet = load_unet(case.weights_dir() / "weights.safetensors", num_heads=config["architecture"]["num_heads"])
    schedule = NoiseSchedule()  # 'scaled_linear', 1000 steps, β 0.00085 … 0.012 (fixtures/README.md)
    settings = GuidanceSettings(
        guidance_scale=config["guide_scale"],
        reference_guidance=config["reference_guidance"],
        reference_strength=config["reference_feature_strength"],
        strength_before_launch=config["feature_strength_before_launch"],
        launch_timestep=config["launch_timestep"],
        guide_rescale=config["guide_rescale"],
    )
    # the reference context defaults to the first negative embedding repeated per reference
    denoiser = ReferenceGuidedDenoiser(unet, schedule, inputs["positive"], inputs["negative"],
                                       inputs["reference_latents"], inputs["mask"], settings)
    sigmas = sampling_sigmas(schedule, config["steps"], config["discretization"])
    x0 = get_solver(config["solver"])(denoiser, inputs["noise"], sigmas)
    assert denoiser.model_timesteps == config["model_timesteps"]
    torch.testing.assert_close(x0, expected["x0"], atol=case.atol, rtol=case.rtol)
