"""The batch's Ray runner: the jobs through Ray Data, one pipeline per worker actor, across the GPUs
and machines of a Ray cluster. Imported only when asked for (``--workers``, ``--address``): Ray
is an optional extra (``pip install "ray[data]"``), never installed into ComfyUI's environment.

``ray.init`` joins the cluster of ``--address`` (or ``RAY_ADDRESS``, or one ``ray start`` began on
this machine) and otherwise starts a local one. The jobs go in as rows with the bytes of their
files (no shared folder is needed), each worker actor loads the pipeline once (`JobWorker`) and
sends back each job's PNG bytes, which the driver writes. Ray 2.60's traps, minded here:

* GPU actors ask for ``num_cpus=0``: an actor that reserves a CPU beside its GPU can leave none for
  the rest of the pipeline on a small machine, which then hangs silently;
* the actor pool is ``compute=ActorPoolStrategy`` (``concurrency=`` is deprecated);
* the `DataContext` is set before the dataset is built (it is read then);
* a worker that dies (killed, out of memory) is restarted and its job sent again, at most
  ``retries`` times (``max_task_retries``; Ray's default would retry forever); a job still without
  a result is then a failed block, which the run skips (``max_errored_blocks = -1``) and the driver
  records as failed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from .batch import Job, JobResult, Runner, execute, job_files, worker_name
from .errors import InvalidInputError
from .runs import FaceOptions, PipelineOptions, load_pipeline


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise InvalidInputError(
            'Running jobs on Ray workers needs Ray, an optional extra of FlashFace: pip install "ray[data]" '
            "(not into ComfyUI's Python). Without --workers and --address the jobs run in this process."
        ) from None
    return ray


class JobWorker:
    """A Ray Data worker actor: loads the pipeline once, then renders one job per batch."""

    def __init__(self, options: str, faces: str, memory_fraction: float, threads: int):
        import ray
        import torch

        # Ray starts workers with OMP_NUM_THREADS=1; the CPU kernels' sums depend on the thread count,
        # so a worker computes with the driver's count, to draw generate's image bit for bit
        torch.set_num_threads(threads)
        from .models.graft import GraftFiles

        settings = json.loads(options)
        graft = settings.pop("graft")
        self.options = PipelineOptions(**settings, graft=GraftFiles(**graft) if graft else None)
        self.faces = FaceOptions(**json.loads(faces))
        if torch.cuda.is_available() and memory_fraction < 1:  # a fractional GPU is Ray's bookkeeping only
            torch.cuda.set_per_process_memory_fraction(memory_fraction)
        self.pipeline = load_pipeline(self.options)
        gpus = ",".join(str(gpu) for gpu in ray.get_gpu_ids())
        self.worker = f"{worker_name()} {self.pipeline.device}" + (f" (Ray GPU {gpus})" if gpus else "")

    def __call__(self, batch: dict) -> dict:
        results = [
            execute(self.pipeline, json.loads(payload), [bytes(data) for data in files], self.faces, self.worker)
            for payload, files in zip(batch["payload"], batch["files"])
        ]
        return {
            "id": [r.id for r in results],
            "status": [r.status for r in results],
            "error": [r.error for r in results],
            "images": [r.images for r in results],
            "seconds": [r.seconds for r in results],
            "worker": [r.worker for r in results],
        }


def worker_runtime_env() -> dict:
    """What every worker gets, on any machine of the cluster: this package (Ray ships it)."""
    return {"py_modules": [str(Path(__file__).resolve().parent)]}


def run_on_ray(
    options: PipelineOptions,
    faces: FaceOptions,
    workers: int | None,
    gpus_per_worker: float | None,
    address: str | None,
    retries: int,
) -> Runner:
    """The Ray runner: `workers` actors (None: one per GPU of the cluster, else one), each
    `gpus_per_worker` GPUs (None: 1 where the cluster has GPUs, else 0)."""
    ray = _ray()

    def runner(jobs: list[Job]) -> Iterator[JobResult]:
        if not jobs:
            return
        if not ray.is_initialized():
            ray.init(address=address, runtime_env=worker_runtime_env(), log_to_driver=False)
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if cluster_gpus else 0.0)
        count = workers or max(1, math.floor(cluster_gpus / gpus) if gpus else 1)
        rows, failed = [], []
        for job in jobs:
            try:
                rows.append({"payload": json.dumps(job.payload()), "files": job_files(job)})
            except InvalidInputError as error:
                failed.append(JobResult(job.id, "failed", error=str(error), worker="driver"))
        yield from failed
        if not rows:
            return
        context = ray.data.DataContext.get_current()  # read when the dataset is built: set first
        context.max_errored_blocks = -1
        context.enable_progress_bars = False
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():  # max_restarts and max_task_retries have no named parameter (Ray 2.60)
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            results = dataset.map_batches(
                JobWorker,
                fn_constructor_kwargs=dict(
                    options=json.dumps(asdict(options), default=str),
                    faces=json.dumps(asdict(faces)),
                    memory_fraction=gpus if 0 < gpus < 1 else 1.0,
                    threads=torch.get_num_threads(),
                ),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=count),
                num_gpus=gpus,
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=retries,
            )
        for row in results.iter_rows():
            yield JobResult(
                row["id"],
                row["status"],
                [bytes(image) for image in row["images"]],
                row["error"],
                float(row["seconds"]),
                row["worker"],
            )

    return runner


def worker_count(value: str) -> int | None:
    """--workers: a positive number, or auto (None: one per GPU of the cluster)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidInputError(f"--workers takes a positive number or auto, got {value!r}.")
    return int(value)
