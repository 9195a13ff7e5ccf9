"""The `demo_generate` fixture cases: the official demo's whole flow, photo to 8-bit image.

Each case gives photos, every setting (case.json), tiny seeded weights in the official naming
(the detector is rebuilt from a fixture recipe) and the official result with its intermediates.
`DemoCase` turns that into what each route needs (library keyword arguments, command-line
options, model files) and checks an image against the case's tolerance; when an image is off,
`diagnose` recomputes every intermediate with the library and names the first one that differs,
so a failing route says where the difference starts.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flashface.models.clip_text import load_text_encoder
from flashface.models.retinaface import load_face_detector
from flashface.models.unet_loading import load_unet
from flashface.models.vae import load_vae
from flashface.pipeline import FlashFacePipeline
from parity import Case, cases, recipe_detector_state

DEMO_KIND = "demo_generate"


def demo_cases() -> list:
    return cases(DEMO_KIND)


@dataclass
class ImageDifference:
    max_levels: int
    mean_levels: float

    def within(self, tolerance: dict) -> bool:
        return self.max_levels <= tolerance["max_abs"] and self.mean_levels <= tolerance["mean_abs"]

    def __str__(self) -> str:
        return f"max {self.max_levels} levels, mean {self.mean_levels:.4f}"


class DemoCase:
    def __init__(self, case: Case):
        self.case = case
        self.config = case.config
        self.expected = case.expected

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def photos(self) -> list[Path]:
        return [self.case.path / name for name in self.config["photos"]]

    def read_photos(self) -> list[Image.Image]:
        return [Image.open(path).convert("RGB") for path in self.photos]

    @property
    def image_tolerance(self) -> dict:
        return self.config["tolerance"]["image_uint8"]

    def detector_state(self) -> dict:
        detector = self.config["detector"]
        return recipe_detector_state(detector["weights"], detector["recipe_seed"], detector["recipe_weight_scale"])

    def model_files(self, folder: Path) -> dict[str, Path]:
        """The case's four model files in `folder` (links to its weights, the detector written),
        named after the case; keys are the Load Model inputs."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for slot, kind in (("unet_name", "unet"), ("vae_name", "vae"), ("clip_name", "clip")):
            source = self.case.weights_dir() / self.config["weights"][kind]
            files[slot] = folder / f"{self.name}_{source.name}"
            if not files[slot].exists():
                files[slot].symlink_to(source)
        files["detector_name"] = folder / f"{self.name}_retinaface.pth"
        if not files["detector_name"].exists():
            torch.save(self.detector_state(), files["detector_name"])
        return files

    def copy_photos(self, folder: Path) -> list[str]:
        """The case's photos copied into `folder` (a ComfyUI input folder) under names of the case."""
        names = []
        for number, path in enumerate(self.photos, 1):
            names.append(f"{self.name}_photo_{number}{path.suffix}")
            shutil.copy(path, folder / names[-1])
        return names

    def settings(self):
        """The case's settings as `GenerationSettings` (the rest are the defaults)."""
        from flashface.settings import GenerationSettings

        c = self.config
        return GenerationSettings(
            seed=c["seed"],
            steps=c["steps"],
            width=c["width"],
            height=c["height"],
            batch_size=c["num_samples"],
            face_box=tuple(c["face_bbox"]),
            reference_feature_strength=c["reference_feature_strength"],
            reference_feature_strength_before_launch=c["reference_feature_strength_before_launch"],
            reference_guidance_strength=c["reference_guidance"],
            text_guidance=c["text_guidance"],
            launch_timestep=c["launch_timestep"],
        )

    def cli_arguments(self, files: dict[str, Path], out: Path) -> list[str]:
        """`python -m flashface generate` options for the case's settings and model files."""
        c = self.config
        arguments = [argument for photo in self.photos for argument in ("--ref", str(photo))]
        arguments += [
            "--prompt",
            c["prompt"],
            "--negative-prompt",
            c["negative_prompt"],
            "--seed",
            str(c["seed"]),
            "--steps",
            str(c["steps"]),
            "--width",
            str(c["width"]),
            "--height",
            str(c["height"]),
            "--batch-size",
            str(c["num_samples"]),
            "--face-box",
            *map(str, c["face_bbox"]),
            "--reference-feature-strength",
            str(c["reference_feature_strength"]),
            "--reference-feature-strength-before-launch",
            str(c["reference_feature_strength_before_launch"]),
            "--reference-guidance-strength",
            str(c["reference_guidance"]),
            "--text-guidance",
            str(c["text_guidance"]),
            "--launch-timestep",
            str(c["launch_timestep"]),
            "--detection-threshold",
            repr(c["min_thr"]),
            "--out",
            str(out),
        ]
        for option, slot in (
            ("--unet", "unet_name"),
            ("--vae", "vae_name"),
            ("--text-encoder", "clip_name"),
            ("--detector", "detector_name"),
        ):
            arguments += [option, str(files[slot])]
        return arguments

    def difference(self, images: torch.Tensor) -> ImageDifference:
        """Difference of uint8 images [B,H,W,3] from the official ones."""
        expected = self.expected["image"]
        if tuple(images.shape) != tuple(expected.shape):
            raise AssertionError(
                f"{self.name}: images of shape {tuple(images.shape)}, official {tuple(expected.shape)}"
            )
        levels = (images.to(torch.int16) - expected.to(torch.int16)).abs()
        return ImageDifference(int(levels.max()), float(levels.float().mean()))


def levels_of(pil_images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.array(image.convert("RGB")) for image in pil_images]))


def diagnose(demo: DemoCase, pipeline) -> list[str]:
    """Each stored intermediate recomputed with the library (the pipeline's networks), in the
    order of the flow; one line each, "OK" or what differs."""
    from flashface.face import REFERENCE_SIZE, pad_to_square
    from flashface.models import clip_text
    from flashface.people import padded_indices
    from flashface.prompts import prompt_text
    from flashface.sampling.mask import box_mask

    c, expected = demo.config, demo.expected
    lines = []

    def report(name: str, actual: torch.Tensor, atol: float = 0.0) -> None:
        wanted = expected[name]
        if tuple(actual.shape) != tuple(wanted.shape):
            lines.append(f"{name}: shape {tuple(actual.shape)}, official {tuple(wanted.shape)}")
            return
        difference = float((actual.double() - wanted.double()).abs().max()) if actual.numel() else 0.0
        lines.append(f"{name}: {'OK' if difference <= atol else 'DIFFERS'} (max difference {difference:.3g})")

    crops = pipeline.crop_reference_faces(demo.read_photos(), c["min_thr"])
    for number, crop in enumerate(crops, 1):
        report(f"detected_face_{number}", levels_of([crop])[0])
    padded = [crops[i] for i in padded_indices(len(crops), random.Random(c["seed"]))]
    report("references_224", levels_of([pad_to_square(face, REFERENCE_SIZE) for face in padded]))
    tokenizer = clip_text.tokenizer(pipeline.text_encoder.config.context_length)
    for side, text in (("positive", c["prompt"]), ("negative", c["negative_prompt"])):
        report(f"{side}_token_ids", tokenizer([prompt_text(text, side, True)]))
    positive, negative = pipeline.encode_prompts(c["prompt"], c["negative_prompt"], c["num_samples"])
    report("positive", positive, 1e-4)
    report("negative", negative, 1e-4)
    report("reference_latents", pipeline.codec.encode_faces(padded).cpu(), 1e-4)
    report("mask", box_mask(c["face_bbox"], c["width"], c["height"])[None].expand(c["num_samples"], -1, -1))
    generator = torch.Generator().manual_seed(c["seed"])
    report("noise", torch.randn(tuple(expected["noise"].shape), generator=generator))
    result = pipeline.generate(crops, c["prompt"], c["negative_prompt"], demo.settings())
    report("x0", result.latents, c["tolerance"]["x0"]["atol"])
    lines.append(f"image: {demo.difference((result.images * 255).round().to(torch.uint8))}")
    return lines


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
