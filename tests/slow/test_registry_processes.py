"""The download cache shared by processes: two Pythons asking for one file make one download."""

from __future__ import annotations

import hashlib
import subprocess
from functools import partial

import pytest

from comfy_process import child_command, result_of
from http_fixture_server import FixtureServer
from http_fixture_server import model_file as payload


@pytest.fixture
def server():
    with FixtureServer() as running:
        yield running


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_two_processes_asking_for_the_same_file_make_one_download(server, tmp_path):
    data = payload()
    url = server.add("/model.pth", data, delay=0.1)  # about 1.3 s of transfer
    command = partial(
        child_command, "process_scenarios:download_beside_another", folder=str(tmp_path), url=url, md5=md5_of(data)
    )
    processes = [
        subprocess.Popen(command(index=i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert {result_of(out) for out, _ in outputs} == {str(tmp_path / "models" / "model.pth")}
    assert "Another process is downloading" in outputs[1][1]
    assert len(server.requests_for("/model.pth")) == 1
    assert (tmp_path / "models" / "model.pth").read_bytes() == data
