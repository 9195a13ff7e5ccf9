"""Model registry and verified download cache, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time

import pytest

from comfy_installs import REPO_ROOT as REPO
from flashface.errors import DownloadError, ModelFileError, RegistryError
from flashface.models.model_registry import (
    KINDS,
    MODEL_REGISTRY,
    ModelFolders,
    entries_of_kind,
    get_model_path,
    model_entry,
)
from flashface.utils import cache_utils
from flashface.utils.cache_utils import CORRUPT_SUFFIX, PART_SUFFIX, DownloadSettings, read_record
from http_fixture_server import FixtureServer
from http_fixture_server import model_file as payload

FAST = DownloadSettings(
    connect_timeout=2,
    read_timeout=2,
    attempts_per_url=3,
    backoff_seconds=0.01,
    max_backoff_seconds=0.05,
    chunk_bytes=4096,
)
SIZE = len(payload())


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(autouse=True)
def registry():
    """MODEL_REGISTRY as it was after every test (the tests add entries as a developer would)."""
    saved = {name: dict(entry) for name, entry in MODEL_REGISTRY.items()}
    yield MODEL_REGISTRY
    MODEL_REGISTRY.clear()
    MODEL_REGISTRY.update(saved)


def register(url: str, data: bytes, filename: str = "model.pth", name: str = "test", **keys) -> str:
    """Add an entry for `data` served at `url` to MODEL_REGISTRY, the documented way; by default
    only the exact size is pinned. Returns the entry's name."""
    MODEL_REGISTRY[name] = {
        "url": url,
        "filename": filename,
        "description": "test model",
        **(keys or {"size": len(data)}),
    }
    return name


@pytest.fixture
def server():
    with FixtureServer() as running:
        yield running


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in (
        "FLASHFACE_OFFLINE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_ENDPOINT",
        "FLASHFACE_MIRROR",
        "FLASHFACE_MODELS_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# (1) fresh install, (2) existing valid file ------------------------------------------------


def test_fresh_install_downloads_verifies_against_server_sha256_and_records_md5(server, tmp_path):
    data = payload()
    entry = register(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    reports = []
    path = get_model_path(
        entry, models_dir=tmp_path, settings=FAST, progress=lambda done, total: reports.append((done, total))
    )
    assert path == tmp_path / "model.pth" and path.read_bytes() == data
    record = read_record(path)
    assert record.verified and record.md5 == md5_of(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    assert "SHA-256 published by the server" in record.checks
    assert reports[-1] == (SIZE, SIZE)
    assert not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


def flip_a_byte_keeping_size_and_time(path):
    """Change the content but not what a stat shows: only hashing could notice."""
    stat = path.stat()
    content = bytearray(path.read_bytes())
    content[1000] ^= 0x55
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return bytes(content)


def test_existing_verified_file_is_used_with_no_request_and_no_rehash(server, tmp_path, monkeypatch):
    data = payload()
    entry = register(server.add("/model.pth", data, hf="etag"), data)
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)  # plain ETags count only from Hugging Face hosts
    path = get_model_path(entry, models_dir=tmp_path, settings=FAST)
    requests_after_download = len(server.requests)
    changed = flip_a_byte_keeping_size_and_time(path)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    assert len(server.requests) == requests_after_download
    assert path.read_bytes() == changed  # not hashed: the change (invisible to a stat) went unnoticed
    os.utime(path)  # a new modification time: now it is hashed, and the change is found
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


def test_file_placed_by_hand_with_pinned_md5_is_hashed_once_then_trusted(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data))
    (tmp_path / "model.pth").write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == tmp_path / "model.pth"
    assert read_record(tmp_path / "model.pth").checks == ("MD5 pinned in the registry",)
    changed = flip_a_byte_keeping_size_and_time(tmp_path / "model.pth")
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == changed  # trusted, not hashed
    assert server.requests == []


def test_missing_file_without_auto_download_names_the_path(server, tmp_path):
    data = payload()
    url = server.add("/model.pth", data)
    with pytest.raises(ModelFileError, match="model.pth") as raised:
        get_model_path(register(url, data), auto_download=False, models_dir=tmp_path)
    assert str(tmp_path / "model.pth") in str(raised.value) and url in str(raised.value)
    assert server.requests == []


# (3) corrupt files ---------------------------------------------------------------------------


def test_changed_file_is_moved_aside_until_a_verified_copy_replaces_it(server, tmp_path):
    data = payload()
    entry = register(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
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
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data), size=SIZE)
    (tmp_path / "model.pth").write_bytes(payload(seed=1))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert len(server.requests_for("/model.pth")) == 1


def test_truncated_file_is_rejected_by_size_without_hashing(server, tmp_path, caplog):
    data = payload()
    entry = register(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    (tmp_path / "model.pth").write_bytes(data[:5000])
    with caplog.at_level(logging.INFO, logger="flashface"):
        assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert "size is 5000 bytes" in caplog.text
    assert f"Checking {tmp_path / 'model.pth'}" not in caplog.text  # the size told; the file was not hashed


# (4) installation layouts: the folders the caller gives (ComfyUI's own layouts, through the nodes'
# adapter and the real folder_paths, are in test_comfyui_in_process.py) ---------------------------


def test_files_are_found_in_the_search_folders_in_order_and_downloads_go_to_the_first_writable(server, tmp_path):
    data = payload()
    name = register(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    first, second, download = tmp_path / "first", tmp_path / "second", tmp_path / "download"
    folders = ModelFolders(search=(first, second, download), download=(download,))
    assert get_model_path(name, folders=folders, settings=FAST) == download / "model.pth"
    second.mkdir()
    (second / "model.pth").write_bytes(data)
    assert get_model_path(name, folders=folders, settings=FAST) == second / "model.pth"
    first.mkdir()
    (first / "model.pth").write_bytes(b"another file with the same name")  # not it: left alone, skipped
    assert get_model_path(name, folders=folders, settings=FAST) == second / "model.pth"
    assert (first / "model.pth").read_bytes() == b"another file with the same name"
    assert len([request for request in server.requests if request.status == 200]) == 1  # one download


def test_standalone_uses_flashface_models_dir_then_the_user_cache(server, tmp_path, monkeypatch):
    data = payload()
    entry = register(server.add("/resolve/main/model.pth", data, hf="redirect"), data)
    assert get_model_path(entry, settings=FAST) == tmp_path / "xdg-cache" / "flashface" / "model.pth"
    monkeypatch.setenv("FLASHFACE_MODELS_DIR", str(tmp_path / "mine"))
    assert get_model_path(entry, settings=FAST) == tmp_path / "mine" / "model.pth"


# Downloads: resume, retries, mirrors, concurrency -----------------------------------------------


def test_interrupted_download_resumes_and_only_the_rest_is_sent_again(server, tmp_path):
    data = payload()
    dropped_at = 12 * 4096
    entry = register(server.add("/resolve/main/model.pth", data, hf="redirect", drop_after=dropped_at), data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    first, second = [r for r in server.requests if r.path.startswith("/cdn")]
    assert first.bytes_sent == dropped_at and first.range is None
    resumed_from = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= dropped_at and second.status == 206
    assert second.bytes_sent == SIZE - resumed_from
    assert server.bytes_sent("/resolve/main/model.pth") == dropped_at + SIZE - resumed_from


def test_partial_file_left_by_a_killed_process_is_resumed(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data))
    (tmp_path / ("model.pth" + PART_SUFFIX)).write_bytes(data[:50_000])
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert server.requests[0].range == "bytes=50000-" and server.bytes_sent("/model.pth") == SIZE - 50_000


def test_server_that_ignores_range_gets_a_clean_restart(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data, honour_range=False, drop_after=40_000), data, md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert [r.status for r in server.requests] == [200, 200] and server.requests[1].range is not None


def test_transient_server_errors_are_retried(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data, fail_first=2), data, md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert [r.status for r in server.requests] == [500, 500, 200]


def test_a_stalled_server_times_out_and_is_given_up_after_the_retries(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data, delay=2.0), data, md5=md5_of(data))
    impatient = DownloadSettings(read_timeout=0.2, attempts_per_url=2, backoff_seconds=0.01, chunk_bytes=4096)
    with pytest.raises(DownloadError, match="timed out") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=impatient)
    assert "2 attempts in a row" in str(raised.value) and len(server.requests) == 2
    assert not (tmp_path / "model.pth").exists()


def test_a_corrupt_transfer_is_downloaded_again(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data, corrupt_times=1), data, md5=md5_of(data))
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data
    assert len(server.requests) == 2


@pytest.mark.parametrize("pins", ["md5", "server_sha256"])
def test_a_wrong_checksum_never_leaves_a_file_at_the_final_path(server, tmp_path, pins):
    data = payload()
    if pins == "md5":
        entry = register(server.add("/model.pth", data, corrupt_times=99), data, md5=md5_of(data))
    else:
        entry = register(server.add("/resolve/main/model.pth", data, hf="redirect", published_sha256="0" * 64), data)
    with pytest.raises(DownloadError, match="failed its check") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert MODEL_REGISTRY[entry]["url"] in str(raised.value) and str(tmp_path / "model.pth") in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
    assert len([r for r in server.requests if r.status == 200]) == FAST.checksum_attempts


def test_a_download_with_no_checksum_to_compare_is_refused_before_the_body(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data), data)  # size only, and no published SHA-256
    with pytest.raises(DownloadError, match="cannot be verified"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert not (tmp_path / "model.pth").exists() and not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


def test_mirror_is_used_when_the_primary_url_is_missing(server, tmp_path):
    data = payload()
    entry = register(
        server.add("/gone.pth", b"", status=404),
        data,
        md5=md5_of(data),
        mirrors=[server.add("/mirror/model.pth", data)],
    )
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


def test_environment_mirror_is_tried_first(server, tmp_path, monkeypatch):
    data = payload()
    entry = register(server.add("/primary.pth", data), data, md5=md5_of(data))
    server.add("/company-mirror/model.pth", data)
    monkeypatch.setenv("FLASHFACE_MIRROR", server.base_url + "/company-mirror/")
    get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert [r.path for r in server.requests] == ["/company-mirror/model.pth"]


@pytest.mark.parametrize("status, advice", [(404, "not found"), (401, "HF_TOKEN"), (403, "HF_TOKEN")])
def test_http_errors_name_the_file_the_url_and_the_manual_path(server, tmp_path, status, advice):
    data = payload()
    entry = register(server.add("/model.pth", b"", status=status), data, md5=md5_of(data))
    with pytest.raises(DownloadError, match=advice) as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    message = str(raised.value)
    assert "model.pth" in message and MODEL_REGISTRY[entry]["url"] in message and str(tmp_path / "model.pth") in message
    assert len(server.requests) == 1  # not retried


def test_token_and_endpoint_override_apply_to_hugging_face_urls(server, tmp_path, monkeypatch):
    data = payload()
    server.add("/org/repo/resolve/main/model.pth", data, hf="redirect", token="secret")
    entry = register("https://huggingface.co/org/repo/resolve/main/model.pth", data)
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST).read_bytes() == data


def test_token_is_not_sent_to_other_hosts_and_their_etags_are_not_taken_for_checksums(server, tmp_path, monkeypatch):
    data = payload()
    monkeypatch.setenv("HF_TOKEN", "secret")
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        get_model_path(
            register(server.add("/private.pth", data, token="secret"), data, md5=md5_of(data)),
            models_dir=tmp_path,
            settings=FAST,
        )
    with pytest.raises(DownloadError, match="cannot be verified"):
        get_model_path(register(server.add("/model.pth", data, hf="etag"), data), models_dir=tmp_path, settings=FAST)


# Offline, read-only, disk full ------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["FLASHFACE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_fails_fast_with_manual_instructions_and_no_request(server, tmp_path, monkeypatch, variable):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data))
    monkeypatch.setenv(variable, "1")
    with pytest.raises(DownloadError, match="offline") as raised:
        get_model_path(entry, models_dir=tmp_path / "models", settings=FAST)
    assert MODEL_REGISTRY[entry]["url"] in str(raised.value) and str(tmp_path / "models" / "model.pth") in str(
        raised.value
    )
    assert server.requests == [] and not (tmp_path / "models").exists()

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pth").write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path / "models") == tmp_path / "models" / "model.pth"


def test_read_only_folder_gives_a_clear_error(server, tmp_path, monkeypatch):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data))
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
    assert str(read_only / "model.pth") in str(raised.value) and MODEL_REGISTRY[entry]["url"] in str(raised.value)
    assert server.requests == []


@pytest.mark.parametrize("size_pinned", [True, False])
def test_full_disk_is_reported_before_the_body_is_downloaded(server, tmp_path, monkeypatch, size_pinned):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data), size=SIZE if size_pinned else None)
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=SIZE // 2))
    with pytest.raises(DownloadError, match="Not enough disk space") as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    assert str(tmp_path / "model.pth") in str(raised.value) and MODEL_REGISTRY[entry]["url"] in str(raised.value)
    assert len(server.requests) == (0 if size_pinned else 1)  # without a pinned size: the response headers
    assert not (tmp_path / "model.pth").exists() and not (tmp_path / ("model.pth" + PART_SUFFIX)).exists()


# The registry itself ----------------------------------------------------------------------------


def test_every_registry_entry_can_be_checked_and_installed_by_hand():
    for name in MODEL_REGISTRY:
        entry = model_entry(name)
        assert entry.size is not None or entry.md5 or entry.sha256
        assert all(url.startswith("https://") for url in entry.urls) and entry.licence and entry.description
        assert entry.kind in KINDS
    assert [entry.filename for entry in map(entries_of_kind, KINDS) for entry in entry[:1]] == [
        "flashface.ckpt",
        "sd-v1-vae.pth",
        "openai-clip-vit-large-14.pth",
        "retinaface_resnet50.pth",
    ]


VALID = {"url": "https://example.com/x.pth", "md5": "0" * 32, "filename": "x.pth", "description": "x"}


@pytest.mark.parametrize(
    "change, key, phrase",
    [
        ({"url": None}, "url", "needs a non-empty text"),
        ({"filename": ""}, "filename", "needs a non-empty text"),
        ({"description": 3}, "description", "not a text"),
        ({"filename": "models/x.pth"}, "filename", "without folders"),
        ({"md5": "abc"}, "md5", "not 32 hexadecimal digits"),
        ({"md5": "g" * 32}, "md5", "not 32 hexadecimal digits"),
        ({"md5": None, "sha256": "0" * 63}, "sha256", "not 64 hexadecimal digits"),
        ({"md5": None}, "md5", "nothing to check a file against"),
        ({"size": -5}, "size", "not a number of bytes"),
        ({"size": "10"}, "size", "not a number of bytes"),
        ({"mirrors": "https://example.com/y.pth"}, "mirrors", "not a list of texts"),
        ({"kind": "lora"}, "kind", "one of unet, vae, text_encoder, detector"),
        ({"checksum": "0" * 32}, "checksum", "unknown key"),
    ],
)
def test_a_malformed_entry_is_named_with_its_key(change, key, phrase):
    MODEL_REGISTRY["broken"] = {**VALID, **change}
    with pytest.raises(RegistryError, match=phrase) as raised:
        get_model_path("broken", models_dir="/nonexistent")
    assert "MODEL_REGISTRY['broken']" in str(raised.value) and f"(key {key!r})" in str(raised.value)


def test_an_entry_that_is_not_a_dict_and_an_unknown_name_are_explained():
    MODEL_REGISTRY["odd"] = ["https://example.com/x.pth"]
    with pytest.raises(RegistryError, match="must be a dict"):
        model_entry("odd")
    with pytest.raises(ModelFileError, match="Unknown model 'nope'; the known models are: flashface"):
        get_model_path("nope")


def test_the_guide_in_technical_md_runs_as_written(server, tmp_path, monkeypatch):
    """TECHNICAL.md "Adding a model": its example, with the local server standing in for the URL."""
    guide = (REPO / "TECHNICAL.md").read_text().split("## Adding a model", 1)[1]
    example = guide.split("```python\n", 1)[1].split("```", 1)[0]
    data = payload(seed=11)
    url = server.add("/models/my_detector.pth", data)
    assert "https://example.com/models/my_detector.pth" in example and "<the file's MD5>" in example
    monkeypatch.setenv("FLASHFACE_MODELS_DIR", str(tmp_path / "models"))
    scope = {}
    exec(
        example.replace("https://example.com/models/my_detector.pth", url).replace("<the file's MD5>", md5_of(data)),
        scope,
    )
    assert scope["path"] == tmp_path / "models" / "my_detector.pth" and scope["path"].read_bytes() == data
    assert read_record(scope["path"]).verified


def test_sidecar_is_small_json_next_to_the_file(server, tmp_path):
    data = payload()
    entry = register(server.add("/model.pth", data), data, md5=md5_of(data))
    path = get_model_path(entry, models_dir=tmp_path, settings=FAST)
    sidecar = json.loads((tmp_path / "model.pth.flashface-check.json").read_text())
    assert sidecar["size"] == SIZE and sidecar["mtime_ns"] == path.stat().st_mtime_ns
    assert sidecar["md5"] == md5_of(data) and sidecar["source"] == MODEL_REGISTRY[entry]["url"]
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes: re-hashed, accepted
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    assert read_record(path).mtime_ns == path.stat().st_mtime_ns


# a file that is there but not usable: the message names the reason ------------------------------


def test_a_copy_of_the_wrong_size_is_named_with_its_size_not_called_missing(server, tmp_path, monkeypatch):
    data = payload()
    entry = register(server.add("/model.pth", data), data)
    (tmp_path / "model.pth").write_bytes(data[:1000])
    monkeypatch.setenv("FLASHFACE_OFFLINE", "1")
    with pytest.raises(DownloadError) as raised:
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
    message = str(raised.value)
    assert f"{tmp_path / 'model.pth'} is not usable: size is 1000 bytes, expected {SIZE}" in message
    assert "offline" in message and "missing" not in message


def test_a_zero_filled_file_of_the_right_size_is_refused_and_its_good_replacement_accepted(
    server, tmp_path, monkeypatch
):
    """What a downloader that reserves the space leaves: the exact size, all zeros."""
    data = payload()
    entry = register(server.add("/model.pth", data), data)
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
    entry = register(server.add("/model.pth", data), data)
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    assert get_model_path(entry, models_dir=tmp_path, settings=FAST) == path
    with pytest.raises(ModelFileError), cache_utils.recorded_load_failure(path):
        raise ModelFileError(f"{path} is not a FlashFace UNet checkpoint: 2142 expected tensors are missing")
    monkeypatch.setenv("FLASHFACE_OFFLINE", "1")
    with pytest.raises(DownloadError, match="2142 expected tensors are missing"):
        get_model_path(entry, models_dir=tmp_path, settings=FAST)
