"""What a user gets equals the official demo: every `demo_generate` fixture case reproduced from its
photos through the library's `generate` with default settings and through `python -m flashface
generate` with only the options the case sets. (The third route, the bundled workflow in a real
ComfyUI server, is in test_comfyui_demo_parity.py.)"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from PIL import Image

from demo_cases import DemoCase, demo_cases, diagnose, levels_of
from flashface.models.clip_text import load_text_encoder
from flashface.models.ops import WEIGHT_DTYPES
from flashface.models.retinaface import load_face_detector
from flashface.models.unet_loading import load_unet
from flashface.models.vae import load_vae
from flashface.pipeline import FlashFacePipeline
from parity import REPO_ROOT

_pipelines: dict[str, FlashFacePipeline] = {}


def case_pipeline(demo: DemoCase, folder) -> FlashFacePipeline:
    """The case's networks loaded from its files, once per case."""
    if demo.name not in _pipelines:
        files = demo.model_files(folder)
        _pipelines[demo.name] = FlashFacePipeline(
            load_unet(files["unet_name"]),
            load_vae(files["vae_name"]),
            load_text_encoder(files["clip_name"]),
            load_face_detector(files["detector_name"]),
            device="cpu",
        )
    return _pipelines[demo.name]


@pytest.fixture(params=demo_cases())
def demo(request) -> DemoCase:
    return DemoCase(request.param)


@pytest.fixture
def models_folder(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "demo_models"


def library_images(pipeline: FlashFacePipeline, demo: DemoCase, **overrides) -> torch.Tensor:
    config = demo.config
    faces = pipeline.crop_reference_faces(demo.read_photos(), config["min_thr"])
    result = pipeline.generate(
        faces, config["prompt"], config["negative_prompt"], dataclasses.replace(demo.settings(), **overrides)
    )
    return levels_of(result.to_pil())


def assert_reproduced(demo: DemoCase, images: torch.Tensor, pipeline: FlashFacePipeline, route: str) -> None:
    difference = demo.difference(images)
    if not difference.within(demo.image_tolerance):
        details = "\n  ".join(diagnose(demo, pipeline))
        pytest.fail(
            f"{demo.name} through {route}: {difference} from the official image (tolerance "
            f"{demo.image_tolerance}). Intermediates recomputed with the library:\n  {details}"
        )
    print(f"{demo.name} via {route}: {difference}")


def test_library_generate_with_default_settings_is_the_official_demo(demo, models_folder):
    pipeline = case_pipeline(demo, models_folder)
    assert_reproduced(demo, library_images(pipeline, demo), pipeline, "the library's generate")


@pytest.mark.slow
def test_command_line_with_the_case_options_is_the_official_demo(demo, models_folder, tmp_path):
    files = demo.model_files(models_folder)
    out = tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "-m", "flashface", "generate", *demo.cli_arguments(files, out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    paths = [out] if demo.config["num_samples"] == 1 else sorted(tmp_path.glob("out_*.png"))
    images = levels_of([Image.open(path) for path in paths])
    assert_reproduced(demo, images, case_pipeline(demo, models_folder), "python -m flashface generate")


@pytest.mark.parametrize("switched_off", ["pad_references", "prompt_postfixes"])
def test_each_official_default_is_needed(demo, models_folder, switched_off):
    """The case detects either default missing (so the two tests above can fail)."""
    pipeline = case_pipeline(demo, models_folder)
    if switched_off == "pad_references" and len(demo.photos) >= 4:
        pytest.skip("four photos or more are never padded")
    difference = demo.difference(library_images(pipeline, demo, **{switched_off: False}))
    assert not difference.within(demo.image_tolerance), difference


@pytest.mark.slow
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
