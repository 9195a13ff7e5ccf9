"""What a user gets from `python -m flashface generate`, in a process of its own, with only the
options a `demo_generate` case sets, equals the official demo."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from demo_cases import assert_reproduced, case_pipeline, levels_of
from parity import REPO_ROOT


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
