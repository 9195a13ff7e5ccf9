"""`python -m flashface batch` on Ray workers: one local Ray instance for the session (2 CPUs, 2 fake
GPUs so that placement is tested without a GPU, a small object store), tiny models. The images are
those of this process's run, bit for bit, with one worker and with two (each on its own GPU), and a
worker killed with SIGKILL in the middle of a run loses no job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time

import pytest

from cli_runs import PHOTOS, quick_flags
from flashface.__main__ import main

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "ray[data]" (tests/setup.sh does)')


@pytest.fixture(scope="module")
def ray_cluster():
    from flashface.batch_ray import worker_runtime_env

    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token written to the home folder
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        runtime_env=worker_runtime_env(),
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def jobs_file(tmp_path):
    for photo in PHOTOS:
        shutil.copy(photo, tmp_path / photo.name)

    def write(count: int) -> str:
        path = tmp_path / f"jobs_{count}.jsonl"
        lines = [
            json.dumps({"id": f"job{n}", "photos": [PHOTOS[n % 2].name], "prompt": f"portrait {n}", "seed": n})
            for n in range(count)
        ]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return write


def records(out) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_one_and_two_workers_draw_this_process_images_and_take_a_gpu_each(
    ray_cluster, jobs_file, tmp_path, model_arguments
):
    jobs = jobs_file(4)
    common = [*quick_flags(steps=2), *model_arguments]
    runs = {"here": [], "one worker": ["--workers", "1"], "two workers": ["--workers", "2"]}
    for name, flags in runs.items():
        assert main(["batch", jobs, "--out", str(tmp_path / name), *flags, *common]) == 0, name
    for n in range(4):
        here = (tmp_path / "here" / f"job{n}.png").read_bytes()
        for name in ("one worker", "two workers"):
            assert (tmp_path / name / f"job{n}.png").read_bytes() == here, (name, n)
    workers = {record["worker"] for record in records(tmp_path / "two workers").values()}
    gpus = {re.search(r"Ray GPU (\d+)", worker).group(1) for worker in workers}
    print(f"\ntwo Ray workers: {sorted(workers)}")
    assert len(workers) == 2 and gpus == {"0", "1"}  # one fake GPU each (torch sees none: CPU)


def test_a_worker_killed_in_the_middle_loses_no_job(ray_cluster, jobs_file, tmp_path, model_arguments):
    jobs = jobs_file(6)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_a_worker():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            manifest = out / "manifest.jsonl"
            if manifest.is_file() and manifest.read_text().strip():
                first = json.loads(manifest.read_text().splitlines()[0])
                pid = int(re.search(r"pid (\d+)", first["worker"]).group(1))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    code = main(["batch", jobs, "--out", str(out), "--workers", "2", *quick_flags(steps=4), *model_arguments])
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    done = records(out)
    print(f"\nafter killing worker {killed[0]}: {sorted((r['id'], r['status'], r['worker']) for r in done.values())}")
    assert set(done) == {f"job{n}" for n in range(6)}  # every job done or failed with a message: nothing lost
    assert all(r["status"] == "done" or r["error"] for r in done.values())
    assert code == 0 and all(r["status"] == "done" for r in done.values())  # the killed worker's job ran again
    assert len({r["worker"] for r in done.values()}) >= 3  # the killed worker was replaced
