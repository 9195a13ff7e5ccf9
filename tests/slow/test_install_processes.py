"""install.py and the pack's imports in processes of their own."""

import re
import subprocess
import sys

from comfy_installs import REPO_ROOT as REPO
from comfy_process import child_command, result_of


def test_dry_run_after_setup_has_nothing_to_install():
    result = subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--dry-run"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "would install" not in result.stdout, result.stdout
    assert "OpenCV: not used by FlashFace" in result.stdout


def test_modules_the_nodes_import_leave_open_clip_unimported():
    """ComfyUI imports the pack at every start; open_clip (with timm, 0.7 s) loads on first use."""
    modules = sorted(
        {
            f"flashface.{m.group(1)}"
            for path in (REPO / "nodes").glob("*.py")
            for m in re.finditer(r"from \.\.flashface\.([\w.]+) import", path.read_text())
        }
    )
    assert "flashface.models.clip_text" in modules
    command = child_command("process_scenarios:modules_imported_by", modules=modules, families=["open_clip", "timm"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result_of(result.stdout) == []
