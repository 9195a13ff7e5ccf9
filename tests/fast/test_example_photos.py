"""The bundled workflows' example photos go into ComfyUI's input folder when the pack starts: each
one once, never over a user's file, and a folder that cannot be written only costs a warning."""

from __future__ import annotations

import json

import pytest

from comfy_installs import REPO_ROOT
from pack_modules import node_module

PHOTOS = sorted(path.name for path in (REPO_ROOT / "workflows" / "input").iterdir())


@pytest.fixture(scope="module")
def examples():
    """nodes/examples.py (the nodes package needs ComfyUI; this module does not)."""
    return node_module("examples")


def test_photos_are_copied_once_and_a_users_file_is_kept(examples, tmp_path):
    input_dir, user_dir = tmp_path / "input", tmp_path / "user"
    input_dir.mkdir()
    (input_dir / PHOTOS[0]).write_bytes(b"the user's own picture")
    copied = examples.copy_example_photos(input_dir, user_dir)
    assert copied == PHOTOS[1:]
    assert (input_dir / PHOTOS[0]).read_bytes() == b"the user's own picture"
    for name in PHOTOS[1:]:
        assert (input_dir / name).read_bytes() == (REPO_ROOT / "workflows" / "input" / name).read_bytes()
    assert sorted(json.loads((user_dir / examples.RECORD_NAME).read_text())) == PHOTOS

    (input_dir / PHOTOS[1]).unlink()  # the user deleted an example: it stays deleted
    assert examples.copy_example_photos(input_dir, user_dir) == []
    assert not (input_dir / PHOTOS[1]).exists()


def test_a_folder_that_cannot_be_written_only_warns(examples, tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the input folder should be")
    assert examples.copy_example_photos(blocked, tmp_path / "user") == []
    assert "copy them from" in caplog.text
