"""The bundled workflows' example photos, put into ComfyUI's input folder so that a template opened
in the template browser runs with one Queue.

Each photo is copied once: the names already copied are remembered in ComfyUI's user folder, so a
photo the user deleted does not come back, and a file of the same name is never overwritten.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

EXAMPLE_PHOTOS = Path(__file__).resolve().parent.parent / "workflows" / "input"
RECORD_NAME = "flashface-example-photos.json"


def copy_example_photos(input_dir: Path, user_dir: Path) -> list[str]:
    """Copy the example photos not copied before and not present; the names copied. Never raises:
    a read-only or missing folder only costs the user copying the photos by hand."""
    record = Path(user_dir) / RECORD_NAME
    try:
        done = set(json.loads(record.read_text(encoding="utf-8"))) if record.is_file() else set()
        copied = []
        for photo in sorted(EXAMPLE_PHOTOS.iterdir()):
            target = Path(input_dir) / photo.name
            if photo.name in done or not photo.is_file():
                continue
            if not target.exists():
                Path(input_dir).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, target)
                copied.append(photo.name)
            done.add(photo.name)
        Path(user_dir).mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(sorted(done), indent=1), encoding="utf-8")
    except (OSError, ValueError) as error:
        logger.warning(
            "FlashFace: could not put the example photos into %s (%s); copy them from %s by hand",
            input_dir,
            error,
            EXAMPLE_PHOTOS,
        )
        return []
    if copied:
        logger.info(
            "FlashFace: example photos for the bundled workflows copied into %s: %s", input_dir, ", ".join(copied)
        )
    return copied
