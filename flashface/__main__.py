"""Command line: ``python -m flashface generate --ref a.jpg --ref b.jpg --prompt "…" --out out.png``.

Several people (experimental): ``--person a.jpg,b.jpg@0.1,0.2,0.35,0.45 --person c.jpg@0.6,0.2,0.85,0.45``
in place of --ref, each with their photos and face box (see `flashface.people`).

Missing model files are downloaded through the model registry (into --models-dir, else
FLASHFACE_MODELS_DIR or the user cache directory); --unet/--vae/--text-encoder/--detector use given
files instead. The generation settings (`settings.GenerationSettings`) each have a flag of the
same name with dashes. The UNet runs in --dtype; the VAE, text encoder and detector run in fp32 as officially.

``python -m flashface batch jobs.jsonl --out DIR [--workers N]`` runs a jobs file, in this process or
on Ray workers (see `flashface.batch`), every generate flag the default of every job.

``python -m flashface convert flashface.ckpt flashface_fp16.safetensors --dtype fp16`` writes the
compact UNet file (each tensor once, in one dtype), which every loader takes in place of the original.
``--graft CHECKPOINT --graft-base BASE`` on generate, batch or convert grafts an SD1.5 fine-tune onto
the UNet (`models.graft`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from tqdm import tqdm

from . import torch_version_problem
from .batch import MANIFEST, Batch, read_jobs, run_here
from .errors import FlashFaceError, InvalidInputError
from .face import DEFAULT_DETECTION_THRESHOLD, SEVERAL_FACES
from .models.graft import GraftFiles, check_strength
from .models.model_registry import KINDS, entries_of_kind, published_size
from .models.ops import WEIGHT_DTYPES
from .models.vae import VAE_ATTENTIONS
from .pipeline import FlashFacePipeline
from .runs import FaceOptions, PersonPhotos, PipelineOptions, load_pipeline, read_image, render
from .sampling.mask import check_face_box, latent_size
from .settings import PRESETS, GenerationSettings, setting_info
from .utils.devices import AUTO

# Flags of earlier versions, still accepted.
OLD_FLAGS = {
    "text_guidance": "--guidance-scale",
    "reference_feature_strength": "--reference-strength",
    "reference_feature_strength_before_launch": "--strength-before-launch",
    "reference_guidance_strength": "--reference-guidance",
    "batch_size": "--num-samples",
}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `GenerationSettings`, its name with dashes; unset flags stay None, so
    that only the flags given override the defaults and the --preset."""
    for item in dataclasses.fields(GenerationSettings):
        info = setting_info(item.name)
        names = [f"--{item.name.replace('_', '-')}", *([OLD_FLAGS[item.name]] if item.name in OLD_FLAGS else [])]
        shown = " ".join(map(str, item.default)) if isinstance(item.default, tuple) else item.default
        options: dict[str, Any] = dict(dest=item.name, default=None, help=f"{info.help} (default: {shown})")
        if info.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif info.choices is not None:
            options["choices"] = info.choices
        elif info.kind is tuple:
            options.update(type=float, nargs=len(cast(tuple, item.default)), metavar=("X1", "Y1", "X2", "Y2"))
        else:
            options["type"] = info.kind
        parser.add_argument(*names, **options)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the paper's recommended settings for a purpose; flags given explicitly override it",
    )


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    settings = GenerationSettings()
    if args.preset:
        settings = settings.with_preset(args.preset)
    given = {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(GenerationSettings)
        if getattr(args, item.name) is not None
    }
    return dataclasses.replace(settings, **given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flashface", description="FlashFace portrait generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images of the person in the reference photos")
    who = gen.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--ref",
        action="append",
        metavar="IMAGE",
        help="reference photo (repeat for several; one face is detected and cropped in each)",
    )
    who.add_argument(
        "--person",
        action="append",
        type=person_argument,
        metavar="PHOTO[,PHOTO...]@X1,Y1,X2,Y2",
        help="one person of several (experimental: the published weights were trained with one "
        "person): their photos and face box as fractions of the image; repeat per person. "
        "Each part of the image takes the likeness of the person whose box is nearest",
    )
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument(
        "--out", required=True, type=Path, help="output image; with several samples NAME_1.png, NAME_2.png, ..."
    )
    add_run_flags(gen)
    batch = commands.add_parser(
        "batch",
        help="many generations from a jobs file (one JSON object per line), in this process or on Ray workers",
        description="Every generate flag is the default of every job; a job's own keys come first.",
    )
    batch.add_argument("jobs", type=Path, help="the jobs file (.jsonl): id, photos or people, prompt, settings")
    batch.add_argument("--out", required=True, type=Path, help="the folder of the images and manifest.jsonl")
    batch.add_argument("--overwrite", action="store_true", help="run every job again, also those done before")
    batch.add_argument(
        "--workers",
        help="run on Ray: N worker actors, or auto (one per GPU of the cluster); default: in this process",
    )
    batch.add_argument(
        "--address", help="a Ray cluster to join (else RAY_ADDRESS, else a local one); implies Ray workers"
    )
    batch.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs each Ray worker takes (default 1 on a cluster with GPUs, else 0; 0.5 puts two on a GPU)",
    )
    batch.add_argument(
        "--retries", type=int, default=2, help="times a job is sent again when its Ray worker dies (default 2)"
    )
    add_run_flags(batch)
    conv = commands.add_parser(
        "convert",
        help="write the compact UNet file: each tensor once, in one dtype "
        f"(fp16: about a third of the published {published_size('flashface')})",
    )
    conv.add_argument("source", type=Path, help="the FlashFace UNet file (flashface.ckpt)")
    conv.add_argument("out", type=Path, help="the new .safetensors file (never overwritten)")
    conv.add_argument(
        "--dtype",
        choices=list(WEIGHT_DTYPES),
        default="fp16",
        help="weight dtype of the file (norms stay fp32); default fp16",
    )
    add_graft_flags(conv)
    add_verbosity_flags(conv)
    return parser


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a generation besides who and what: settings, detection, models, device."""
    add_setting_flags(parser)
    parser.add_argument("--no-detect", action="store_true", help="the photos are already face crops")
    parser.add_argument(
        "--detection-threshold",
        type=float,
        default=DEFAULT_DETECTION_THRESHOLD,
        help=f"RetinaFace score a face needs (default {DEFAULT_DETECTION_THRESHOLD}, as officially)",
    )
    parser.add_argument(
        "--several-faces",
        choices=SEVERAL_FACES,
        default="largest",
        help="a photo with several faces: keep the largest (default), stop (error), or keep all",
    )
    parser.add_argument(
        "--device",
        default=AUTO,
        help="torch device: auto (default: CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:1, mps",
    )
    parser.add_argument(
        "--dtype",
        choices=[AUTO, *WEIGHT_DTYPES],
        default=AUTO,
        help="UNet weight precision: auto (default: fp16 on a GPU, fp32 on the CPU, as ComfyUI picks); "
        "fp8: stored in fp8, computed in fp32 on the CPU, fp16 on a GPU",
    )
    parser.add_argument(
        "--vae-attention",
        choices=VAE_ATTENTIONS,
        default=VAE_ATTENTIONS[0],
        help="official: the VAE mid-block attention exactly as the official code computes it "
        "(default); standard: the usual SD attention, as ComfyUI's own VAE Decode",
    )
    parser.add_argument("--models-dir", type=Path, help="where model files are found and downloaded to")
    add_graft_flags(parser)
    for kind in KINDS:
        parser.add_argument(
            f"--{kind.replace('_', '-')}",
            *(["--clip"] if kind == "text_encoder" else []),
            dest=kind,
            type=Path,
            metavar="FILE",
            help=f"a file to use instead of the registry's {entries_of_kind(kind)[0].description}",
        )
    add_verbosity_flags(parser)


def add_graft_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--graft",
        type=Path,
        metavar="CHECKPOINT",
        help="experimental: an SD1.5 fine-tune whose look is grafted onto FlashFace (add difference: "
        "FlashFace + strength * (CHECKPOINT - BASE)); needs --graft-base",
    )
    parser.add_argument(
        "--graft-base",
        type=Path,
        metavar="BASE",
        help="the SD1.5 the --graft checkpoint was fine-tuned from (usually v1-5-pruned-emaonly)",
    )
    parser.add_argument(
        "--graft-strength", type=float, default=1.0, help="how much of the difference is added (default 1)"
    )


def graft_request(args: argparse.Namespace) -> GraftFiles | None:
    """The --graft flags as a graft, checked (both files, a finite strength) before anything loads."""
    if (args.graft is None) != (args.graft_base is None):
        raise InvalidInputError(
            "--graft and --graft-base go together: the fine-tune to graft and the SD1.5 it was trained from."
        )
    if args.graft is None:
        return None
    check_strength(args.graft_strength)
    for path in (args.graft, args.graft_base):
        if not path.is_file():
            raise InvalidInputError(f"{path} does not exist: give the path of an SD1.5 checkpoint file.")
    return GraftFiles(str(args.graft), str(args.graft_base), args.graft_strength)


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    """What `runs.load_pipeline` loads, from the flags."""

    def named(path: Path | None) -> str | None:
        return None if path is None else str(path)

    return PipelineOptions(
        unet=named(args.unet),
        vae=named(args.vae),
        text_encoder=named(args.text_encoder),
        detector=named(args.detector),
        models_dir=named(args.models_dir),
        device=args.device,
        dtype=args.dtype,
        vae_attention=args.vae_attention,
        detect_faces=not args.no_detect,
        graft=graft_request(args),
    )


def face_options(args: argparse.Namespace) -> FaceOptions:
    return FaceOptions(args.detection_threshold, args.several_faces, detect=not args.no_detect)


def load_pipeline_with_progress(options: PipelineOptions) -> FlashFacePipeline:
    with tqdm(desc="grafting", unit="tensor", disable=None if options.graft else True) as bar:

        def grafted(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return load_pipeline(options, grafted)


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", action="store_true", help="log details too (debug level)")
    loudness.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def convert(args: argparse.Namespace) -> list[Path]:
    from .models.convert import convert_unet

    with tqdm(total=None, unit="B", unit_scale=True, desc="converting", disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return [convert_unet(args.source, args.out, WEIGHT_DTYPES[args.dtype], progress, graft_request(args))]


def person_argument(value: str) -> tuple[list[Path], tuple[float, ...]]:
    """--person PHOTO[,PHOTO...]@X1,Y1,X2,Y2 -> (photos, box)."""
    photos, at, box = value.rpartition("@")
    try:
        corners = tuple(float(v) for v in box.split(","))
        check_face_box(corners)
    except (ValueError, InvalidInputError):
        corners = ()
    if not at or not photos or len(corners) != 4:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PHOTO[,PHOTO...]@X1,Y1,X2,Y2: give the person's photos, then @ and their face box as "
            "four fractions of the image between 0 and 1, e.g. me.jpg,me2.jpg@0.1,0.2,0.4,0.5"
        )
    return [Path(photo) for photo in photos.split(",")], corners


def read_photo(path: Path) -> Image.Image:
    return read_image(path, "reference image", path)


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(1, count + 1)]


def generate(args: argparse.Namespace) -> list[Path]:
    settings = settings_from_args(args)  # reject bad settings before loading gigabytes
    latent_size(settings.width, settings.height)
    options = pipeline_options(args)
    if args.person and args.face_box is not None:
        raise InvalidInputError("--face-box places one person: with --person give each person's box after the @.")
    given = [(args.ref, None)] if args.ref else args.person
    people = [PersonPhotos(tuple(read_photo(path) for path in paths), box) for paths, box in given]
    pipeline = load_pipeline_with_progress(options)
    bars: list[tqdm] = []  # opened at the first step: the faces are found before it

    def progress(step: int, total: int, x0: torch.Tensor) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="sampling", unit="step"))
        bars[0].update(1)

    try:
        images = render(
            pipeline, people, args.prompt, args.negative_prompt, settings, face_options(args), progress=progress
        )
    finally:
        for bar in bars:
            bar.close()
    paths = output_paths(args.out, settings.batch_size)
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return paths


def batch(args: argparse.Namespace) -> int:
    """Run a jobs file; 0 when every job is done, 1 otherwise (after the summary line)."""
    jobs = read_jobs(args.jobs, settings_from_args(args))  # the whole file checked before anything runs
    options, faces = pipeline_options(args), face_options(args)
    if args.workers is not None or args.address is not None:
        from .batch_ray import run_on_ray, worker_count

        workers = worker_count(args.workers) if args.workers is not None else None
        runner = run_on_ray(options, faces, workers, args.gpus_per_worker, args.address, args.retries)
    else:
        runner = run_here(lambda: load_pipeline_with_progress(options), faces)
    summary = Batch(jobs, args.out, args.overwrite).run(runner)
    print(f"{summary}; manifest: {args.out / MANIFEST}")
    return 0 if summary.failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if problem := torch_version_problem(torch.__version__):
        print(f"flashface: error: {problem}", file=sys.stderr)
        return 1
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    try:
        if args.command == "batch":
            return batch(args)
        for path in convert(args) if args.command == "convert" else generate(args):
            print(path)
    except FlashFaceError as error:
        print(f"flashface: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
