"""What a user gets equals the official demo: every `demo_generate` fixture case reproduced from its
photos through the library's `generate` with default settings. (The other routes: `python -m
flashface generate` in tests/slow/test_demo_parity_command_line.py, the bundled workflow in a real
ComfyUI server in tests/comfyui/test_comfyui_demo_parity.py.)"""

from __future__ import annotations

import pytest

from demo_cases import assert_reproduced, case_pipeline, library_images
from flashface.models.ops import WEIGHT_DTYPES
from flashface.models.unet_loading import load_unet
from flashface.pipeline import FlashFacePipeline


def test_library_generate_with_default_settings_is_the_official_demo(demo, models_folder):
    pipeline = case_pipeline(demo, models_folder)
    assert_reproduced(demo, library_images(pipeline, demo), pipeline, "the library's generate")


@pytest.mark.parametrize("switched_off", ["pad_references", "prompt_postfixes"])
def test_each_official_default_is_needed(demo, models_folder, switched_off):
    """The case detects either default missing (so the library and command-line routes can fail)."""
    pipeline = case_pipeline(demo, models_folder)
    if switched_off == "pad_references" and len(demo.photos) >= 4:
        pytest.skip("four photos or more are never padded")
    difference = demo.difference(library_images(pipeline, demo, **{switched_off: False}))
    assert not difference.within(demo.image_tolerance), difference


@pytest.mark.parametrize(
    ("weights", "mean_bound"), [("fp16", 1.0), ("bf16", 5.0), ("fp8_e4m3fn", 25.0), ("fp8_e5m2", 40.0)]
)
def test_the_demo_with_lower_precision_weights_stays_near_the_official_image(demo, models_folder, weights, mean_bound):
    """The UNet stored in `weights` (fp8: computing in fp32 on the CPU), everything else as the
    official fp32 demo: how far the image moves (printed; TECHNICAL.md quotes it)."""
    exact = case_pipeline(demo, models_folder)
    unet = load_unet(demo.model_files(models_folder)["unet_name"], dtype=WEIGHT_DTYPES[weights])
    lower = FlashFacePipeline(unet, exact.vae, exact.text_encoder, exact.detector, device="cpu")
    difference = demo.difference(library_images(lower, demo))
    print(f"\n{demo.name} with {weights} UNet weights: {difference} from the official fp32 image")
    assert 0 < difference.mean_levels < mean_bound
