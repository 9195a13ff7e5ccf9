"""Images per hour of `python -m flashface batch` in this process and on Ray with 1 and 2 workers on
this machine, and what Ray adds per job.

Each run is the same jobs file (N jobs of one photo each, distinct seeds) into a fresh folder, timed
whole: model loads, Ray's start (a local instance, started once and reused) and the jobs. Printed
per run: seconds, images per hour, seconds per job; then Ray's overhead per job against this
process (the difference of the 1-worker run and this process's, per job). With --tiny (the default
without a GPU) the tests' tiny models at 64 px: the figures are then the overhead of the machinery,
not FlashFace's speed; with --registry the real files (downloaded if missing) at --size px.

    python bench/bench_batch.py [--jobs 8] [--steps 4] [--tiny | --registry --size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flashface.__main__ import main as flashface_main  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "workflows" / "input" / "flashface_astronaut.jpg"


def model_flags(tiny: bool, folder: Path) -> list[str]:
    if not tiny:
        return []
    from cli_runs import model_flags as tiny_flags
    from tiny_flashface_models import write_tiny_models

    return tiny_flags(write_tiny_models(folder / "models"))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--registry", action="store_true", help="the real model files instead of the tiny ones")
    args = parser.parse_args()
    tiny = not args.registry
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    folder = Path(tempfile.mkdtemp(prefix="flashface-batch-bench-"))
    try:
        shutil.copy(PHOTO, folder / PHOTO.name)
        jobs = folder / "jobs.jsonl"
        jobs.write_text(
            "".join(
                json.dumps({"id": f"job{n}", "photos": [PHOTO.name], "prompt": "a portrait", "seed": n}) + "\n"
                for n in range(args.jobs)
            )
        )
        common = [
            *model_flags(tiny, folder),
            "--steps",
            str(args.steps),
            "--width",
            str(args.size),
            "--height",
            str(args.size),
            "--quiet",
        ]
        import ray

        from flashface.batch_ray import worker_runtime_env

        started = time.perf_counter()
        ray.init(runtime_env=worker_runtime_env(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        print(
            f"{args.jobs} jobs, {args.steps} steps, {args.size} px, {'tiny' if tiny else 'real'} models; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; Ray started in {ray_start:.1f} s"
        )
        seconds = {}
        for name, flags in {
            "this process": [],
            "Ray, 1 worker": ["--workers", "1"],
            "Ray, 2 workers": ["--workers", "2"],
        }.items():
            started = time.perf_counter()
            code = flashface_main(["batch", str(jobs), "--out", str(folder / name.replace(" ", "_")), *flags, *common])
            seconds[name] = time.perf_counter() - started
            if code != 0:
                print(f"{name}: a job failed (exit {code})")
            print(
                f"  {name:<16}{seconds[name]:8.1f} s  {3600 * args.jobs / seconds[name]:9.0f} images/hour  "
                f"{seconds[name] / args.jobs:6.2f} s/job"
            )
        overhead = (seconds["Ray, 1 worker"] - seconds["this process"]) / args.jobs
        print(f"  Ray's overhead per job (1 worker against this process, worker start included): {overhead:+.2f} s")
        ray.shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
