"""Command line: ``python -m flashface generate --ref a.jpg --ref b.jpg --prompt "…" --out out.png``.

Missing model files are downloaded through the model registry (into --models-dir, else
FLASHFACE_MODELS_DIR or the user cache directory); --unet/--vae/--clip/--detector use given files
instead. The UNet runs in --dtype; the VAE, text encoder and detector run in fp32 as officially.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import FlashFaceError, InvalidInputError
from .face import DEFAULT_DETECTION_THRESHOLD, SEVERAL_FACES
from .models.model_registry import entries_of_kind, get_model_path
from .utils.cache_utils import recorded_load_failure
from .models.vae import VAE_ATTENTIONS
from .pipeline import NOISE_SOURCES, PRESETS, FlashFacePipeline
from .prompts import POSITIVE_POSTFIX
from .sampling.mask import latent_size
from .sampling.schedule import DISCRETIZATIONS, SPACINGS
from .sampling.solvers import SOLVERS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flashface", description="FlashFace portrait generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images of the person in the reference photos")
    gen.add_argument("--ref", action="append", required=True, metavar="IMAGE",
                     help="reference photo (repeat for several; one face is detected and cropped in each)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--out", required=True, type=Path,
                     help="output image; with several samples NAME_1.png, NAME_2.png, ...")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=35)
    gen.add_argument("--solver", choices=sorted(SOLVERS), default="ddim")
    gen.add_argument("--discretization", choices=DISCRETIZATIONS, default="trailing")
    gen.add_argument("--sigma-spacing", choices=SPACINGS, default="timesteps")
    gen.add_argument("--preset", choices=sorted(PRESETS), help="the paper's recommended settings")
    gen.add_argument("--guidance-scale", type=float, help="text guidance g (default 7.5)")
    gen.add_argument("--reference-guidance", type=float, help="reference guidance c (default 3.2)")
    gen.add_argument("--reference-strength", type=float, help="reference feature strength λ (default 1.2)")
    gen.add_argument("--strength-before-launch", type=float, default=0.85,
                     help="reference feature strength λ0 before the launch timestep (default 0.85)")
    gen.add_argument("--launch-timestep", type=int, help="3-branch guidance from this timestep down (default 750)")
    gen.add_argument("--face-box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                     help="normalized face position (default 0.3 0.1 0.6 0.4; 0 0 0 0 = anywhere)")
    gen.add_argument("--width", type=int, default=768)
    gen.add_argument("--height", type=int, default=768)
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--pad-references", action=argparse.BooleanOptionalAction, default=True,
                     help="pad 1-3 reference faces to four by seeded random repetition, as the official demo "
                          "always does (default: on; the model was only run with four)")
    gen.add_argument("--prompt-postfixes", action=argparse.BooleanOptionalAction, default=True,
                     help=f"add the official demo's quality words to the prompt ('{POSITIVE_POSTFIX}') and its "
                          "negative list to the negative prompt, as the demo always does (default: on)")
    gen.add_argument("--noise", choices=NOISE_SOURCES, default="cpu",
                     help="cpu: the same image for a seed on every device; device: the official CUDA noise")
    gen.add_argument("--no-detect", action="store_true", help="the --ref images are already face crops")
    gen.add_argument("--detection-threshold", type=float, default=DEFAULT_DETECTION_THRESHOLD,
                     help=f"RetinaFace score a face needs (default {DEFAULT_DETECTION_THRESHOLD}, as officially)")
    gen.add_argument("--several-faces", choices=SEVERAL_FACES, default="largest",
                     help="a photo with several faces: keep the largest (default), stop (error), or keep all")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet precision")
    gen.add_argument("--vae-attention", choices=VAE_ATTENTIONS, default=VAE_ATTENTIONS[0],
                     help="official: the VAE mid-block attention exactly as the official code computes it "
                          "(default); standard: the usual SD attention, as ComfyUI's own VAE Decode")
    gen.add_argument("--models-dir", type=Path, help="where model files are found and downloaded to")
    for name, what in (("unet", "FlashFace UNet"), ("vae", "VAE"), ("clip", "CLIP text encoder"),
                       ("detector", "RetinaFace detector")):
        gen.add_argument(f"--{name}", type=Path, metavar="FILE", help=f"{what} file instead of the registry's")
    gen.add_argument("--verbose", action="store_true")
    return parser


def read_photo(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise InvalidInputError(f"Cannot read the reference image {path}: {error}. Give a JPEG, PNG or WebP file.") \
            from error


def _load(loader, explicit: Path | None, kind: str, models_dir: Path | None, **options):
    """`loader` on the given file, else on a verified copy of the registry's default file of that
    kind (downloaded if missing)."""
    path = explicit if explicit is not None else get_model_path(entries_of_kind(kind)[0].name, models_dir=models_dir)
    with recorded_load_failure(path):
        return loader(path, **options)


def load_pipeline(args: argparse.Namespace) -> FlashFacePipeline:
    from .models.clip_text import load_text_encoder
    from .models.retinaface import load_face_detector
    from .models.unet import load_unet
    from .models.vae import load_vae

    device = torch.device(args.device)
    unet = _load(load_unet, args.unet, "unet", args.models_dir, device=device, dtype=DTYPES[args.dtype])
    vae = _load(load_vae, args.vae, "vae", args.models_dir, device=device, dtype=torch.float32,
                attention=args.vae_attention)
    text_encoder = _load(load_text_encoder, args.clip, "text_encoder", args.models_dir, device=device, dtype=torch.float32)
    detector = None
    if not args.no_detect:
        detector = _load(load_face_detector, args.detector, "detector", args.models_dir, device=device,
                         dtype=torch.float32)
    return FlashFacePipeline(unet, vae, text_encoder, detector, device=device)


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(1, count + 1)]


def generate(args: argparse.Namespace) -> list[Path]:
    latent_size(args.width, args.height)  # reject a bad size before loading gigabytes
    photos = [read_photo(path) for path in args.ref]
    pipeline = load_pipeline(args)
    faces = photos if args.no_detect else pipeline.crop_reference_faces(photos, args.detection_threshold,
                                                                         args.several_faces)
    with tqdm(desc="sampling", unit="step") as bar:
        def progress(step: int, total: int, x0: torch.Tensor) -> None:
            bar.total = total
            bar.update(1)

        result = pipeline.generate(
            faces, args.prompt, args.negative_prompt, seed=args.seed, steps=args.steps, solver=args.solver,
            discretization=args.discretization, sigma_spacing=args.sigma_spacing,
            guidance_scale=args.guidance_scale, reference_guidance=args.reference_guidance,
            reference_strength=args.reference_strength, strength_before_launch=args.strength_before_launch,
            launch_timestep=args.launch_timestep,
            face_box=args.face_box, width=args.width, height=args.height, num_samples=args.num_samples,
            pad_references=args.pad_references, prompt_postfixes=args.prompt_postfixes,
            noise=args.noise, preset=args.preset, progress=progress)
    paths = output_paths(args.out, args.num_samples)
    for image, path in zip(result.to_pil(), paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        for path in generate(args):
            print(path)
    except FlashFaceError as error:
        print(f"flashface: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
