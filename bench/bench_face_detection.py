"""Seconds per reference photo for face detection (RetinaFace-R50 at 640x640) and the face crop.

Weights are seeded random ones in the published layout (tests/tiny_retinaface.py), written once
to a temporary file and loaded with `load_face_detector`; the photo is random noise. Detection
time does not depend on the weights except through the number of candidate boxes NMS sees, so
the run uses the official threshold 0.6 and reports how many faces that left.

    python bench/bench_face_detection.py                  # fp32, 5 repeats
    python bench/bench_face_detection.py --dtype bfloat16 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from flashface.face import crop_face, detect_faces, prepare_reference  # noqa: E402
from flashface.models.retinaface import load_face_detector  # noqa: E402
from tiny_retinaface import write_retinaface  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with PeakMemory() as memory:
        with tempfile.TemporaryDirectory() as folder:
            path = write_retinaface(os.path.join(folder, "retinaface_resnet50.pth"))
            start = time.perf_counter()
            detector = load_face_detector(path, dtype=getattr(torch, args.dtype))
            load_seconds = time.perf_counter() - start

        pixels = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        photo = Image.fromarray(pixels)
        detect_faces(detector, photo, 0.6, "cpu")  # warm-up
        detect_times, crop_times, faces = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            faces = detect_faces(detector, photo, 0.6, "cpu")
            detect_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for face in faces[:1]:
                prepare_reference(crop_face(photo, face))
            crop_times.append(time.perf_counter() - start)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.dtype}, "
        f"photo {args.width}x{args.height}"
    )
    print(f"load (110 MB .pth):             {load_seconds:.2f} s")
    print(
        f"detect_faces, median of {args.repeats}:    {np.median(detect_times):.3f} s "
        f"(min {min(detect_times):.3f}, {len(faces)} faces above 0.6)"
    )
    print(f"crop + prepare_reference (1):   {np.median(crop_times) * 1000:.1f} ms")
    print(memory)


if __name__ == "__main__":
    main()
