"""Where the runs of a grid train: in this process, in local worker processes, as Ray tasks or as Slurm jobs.

An executor runs one callable over a list of items and returns the results in order (``map``); the study runner
(:func:`dpolab.studies.runner.run_grid`) gives it one wave of independent runs at a time. Every executor runs the
same :class:`~dpolab.studies.runner.RunJob` with the same seeds and data order and pins torch's CPU threads to the
per-run ``cpus`` when given, so a grid gives the same per-run results whichever one ran it. Run folders live under
the comparison's ``--out`` folder, which remote workers must see at the same path (shared storage).

- ``local``: one run after another in this process, or ``parallel`` worker processes (spawned; each gets
  ``cpus`` threads, default the machine's cores divided by ``parallel``);
- ``ray``: each run a Ray task requesting ``num_cpus`` / ``num_gpus`` / ``memory``; ``address`` joins a running
  cluster (default: a local one started here, or the one ``ray.init`` already made);
- ``slurm``: each run a Slurm job through ``submitit`` (``partition``, ``time``, ``mem``, ``gpus``, ``cpus``; one job
  per run, or one job array with ``array``); ``cluster="local"`` runs the same jobs as local processes (for tests).
  ``time`` (minutes) is required: without it submitit asks Slurm for 5 minutes and a longer run is killed.

The driver stops at the first run that fails (Ray: as soon as it fails; Slurm: at the next poll), and when it stops
for any reason (that failure, Ctrl-C, SIGTERM, any error) it cancels the Ray tasks or Slurm jobs it started that are
still queued or running, and says so: left alone they kept training into run folders that a rerun then trains again.

``ray`` and ``submitit`` are optional (``pip install "dpolab[ray]"`` / ``"dpolab[slurm]"``).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from ..errors import ConfigError, MissingPackageError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class Resources:
    """What one run asks for: CPU threads, GPUs, memory in GB, time limit in minutes (None: the executor's default)."""

    cpus: Optional[int] = None
    gpus: int = 0
    mem_gb: Optional[float] = None
    time_min: Optional[int] = None

    def check(self) -> "Resources":
        for name, v, lo in (
            ("cpus", self.cpus, 1),
            ("gpus", self.gpus, 0),
            ("mem", self.mem_gb, 0),
            ("time", self.time_min, 1),
        ):
            if v is not None and v < lo:
                raise ConfigError(f"--{name} must be >= {lo}, got {v}")
        return self


class Executor:
    """Base: ``map(fn, items)`` -> results in order. ``in_process``: runs share this process (and its log);
    ``threads``: torch CPU threads each run is pinned to (None: leave torch's default)."""

    name = "?"
    in_process = False
    threads: Optional[int] = None

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        names: Sequence[str] = (),
        log: Callable[[str], None] = print,
    ) -> List[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    def __init__(self, parallel: int = 1, resources: Optional[Resources] = None):
        if parallel < 1:
            raise ConfigError(f"--parallel must be >= 1, got {parallel}")
        self.parallel = parallel
        self.resources = (resources or Resources()).check()
        r = self.resources
        given = [flag for flag, v in (("--gpus", r.gpus), ("--mem", r.mem_gb), ("--time", r.time_min)) if v]
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply to --executor ray or slurm; the local executor uses this machine as it is"
            )
        self.name = "local"
        self.in_process = parallel == 1
        cores = os.cpu_count() or 1
        self.threads = self.resources.cpus or (None if parallel == 1 else max(1, cores // parallel))

    def describe(self) -> str:
        return "local" + (f", {self.parallel} processes" if self.parallel > 1 else ", one run after another")

    def map(self, fn, items, *, names=(), log=print):
        if self.parallel == 1:
            return [fn(item) for item in items]
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        payloads = [_dumps(fn, item) for item in items]
        ctx = multiprocessing.get_context("spawn")  # no forked torch / thread state
        with ProcessPoolExecutor(
            max_workers=min(self.parallel, len(items)),
            mp_context=ctx,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            return list(pool.map(_call_payload, payloads))


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """In a worker process: exit as soon as the driver that started it is gone. A driver killed by a signal it does
    not handle (``kill``, a scheduler's SIGTERM) skips the pool's shutdown, and its workers kept training into the run
    folders, where a restarted study then trained the same runs beside them. A run cut short this way resumes from
    its last checkpoint, as after any kill."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="dpolab-exit-with-parent", daemon=True).start()


def _dumps(fn, item) -> bytes:
    """``(fn, item)`` pickled for a worker process: plain pickle, or cloudpickle for closures (hooks of studies)."""
    try:
        return b"P" + pickle.dumps((fn, item))
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        try:
            import cloudpickle
        except ImportError:
            raise MissingPackageError(
                f"--parallel: this grid holds functions plain pickle cannot send to a worker "
                f"({e}); pip install cloudpickle"
            ) from e
        return b"C" + cloudpickle.dumps((fn, item))


def _call_payload(payload: bytes):
    if payload[:1] == b"C":
        import cloudpickle

        fn, item = cloudpickle.loads(payload[1:])
    else:
        fn, item = pickle.loads(payload[1:])
    return fn(item)


def _require(module: str, extra: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(
            f"--executor {extra} needs the '{package}' package: pip install {package} "
            f'(or pip install -e ".[{extra}]")'
        ) from e


class _Remote(Executor):
    """Ray and Slurm: each run a task or job of its own that asks for ``resources`` (one CPU thread by default)."""

    def __init__(self, resources: Optional[Resources]):
        self.resources = (resources or Resources()).check()
        self.threads = self.resources.cpus or 1

    def per_run(self) -> str:
        r = self.resources
        return (
            f"per run {self.threads} CPU, {r.gpus} GPU"
            + (f", {r.mem_gb:g} GB" if r.mem_gb else "")
            + (f", {r.time_min} min" if r.time_min else "")
        )


class RayExecutor(_Remote):
    name = "ray"

    def __init__(self, address: Optional[str] = None, resources: Optional[Resources] = None):
        super().__init__(resources)
        self.ray = _require("ray", "ray", "ray")
        self.address = address

    def describe(self) -> str:
        return f"ray ({self.address or 'local cluster'}; {self.per_run()})"

    def map(self, fn, items, *, names=(), log=print):
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=True)
        opts = {"num_cpus": self.threads, "num_gpus": self.resources.gpus, "max_retries": 0}
        if self.resources.mem_gb:
            opts["memory"] = int(self.resources.mem_gb * 1024**3)
        remote = ray.remote(**opts)(_call)
        refs: list = []
        try:
            for item in items:
                refs.append(remote.remote(fn, item))
            log(f"ray: {len(refs)} task(s) submitted")
            pending = list(refs)
            while pending:  # the first failure is raised at once (ray.get of the whole list would wait in order)
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
            return ray.get(refs)
        except BaseException as e:
            live = _still_running(lambda: ray.wait(refs, num_returns=len(refs), timeout=0)[1] if refs else [], refs)
            _cancel_all("ray", "task", live, lambda ref: ray.cancel(ref, force=True, recursive=True), e, log)
            raise


def _call(fn, item):
    return fn(item)


def _still_running(ask: Callable[[], List[Any]], started: Sequence[Any]) -> List[Any]:
    """The started tasks or jobs not finished yet (all of them when the scheduler cannot be asked)."""
    try:
        return list(ask())
    except Exception:  # noqa: BLE001 - cancelling a finished one is harmless; missing a running one is not
        return list(started)


def _cancel_all(
    kind: str,
    what: str,
    started: Sequence[Any],
    cancel: Callable[[Any], None],
    why: BaseException,
    log: Callable[[str], None],
) -> None:
    """Cancel every ``started`` task or job (cancelling a finished one is a no-op) when the driver stops; never
    raises, so the driver's own error is what the user sees."""
    failed = []
    for one in started:
        try:
            cancel(one)
        except Exception as e:  # noqa: BLE001 - one that cannot be cancelled must not hide the others or the cause
            failed.append(f"{getattr(one, 'job_id', one)}: {e}")
    reason = "interrupted" if isinstance(why, KeyboardInterrupt) else f"{type(why).__name__}: {str(why)[:200]}"
    if started:
        log(
            f"{kind}: stopping ({reason}); cancelled {len(started) - len(failed)} {what}(s) still queued or running"
            + (f"; could not cancel {len(failed)}: {'; '.join(failed)[:300]}" if failed else "")
        )


class SlurmExecutor(_Remote):
    name = "slurm"

    def __init__(
        self,
        folder: Path,
        partition: Optional[str] = None,
        resources: Optional[Resources] = None,
        array: bool = False,
        cluster: Optional[str] = None,
    ):
        super().__init__(resources)
        self.submitit = _require("submitit", "slurm", "submitit")
        if not self.resources.time_min:
            raise ConfigError(
                "--executor slurm needs --time MINUTES, each job's time limit (without it submitit "
                "asks Slurm for 5 minutes and a longer run is killed); --dry-run prints an estimate of a "
                "run's time"
            )
        self.folder, self.partition, self.array, self.cluster = Path(folder), partition, array, cluster
        self.poll_s = 5.0  # how often the driver asks whether the jobs have finished

    def describe(self) -> str:
        return (
            f"slurm via submitit ({'partition ' + self.partition if self.partition else 'default partition'}"
            + (f", cluster={self.cluster}" if self.cluster else "")
            + f"; {self.per_run()}"
            + ("; one job array" if self.array else "; one job per run")
            + ")"
        )

    def _executor(self):
        ex = self.submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        r = self.resources
        params: dict = {"cpus_per_task": self.threads, "tasks_per_node": 1, "nodes": 1, "name": "dpolab"}
        given = {
            "timeout_min": r.time_min,
            "mem_gb": r.mem_gb,
            "gpus_per_node": r.gpus,
            "slurm_partition": self.partition,
        }
        params.update({k: v for k, v in given.items() if v})
        ex.update_parameters(**params)
        return ex

    def map(self, fn, items, *, names=(), log=print):
        import time

        ex = self._executor()
        jobs: list = []
        try:
            if self.array:
                jobs = ex.map_array(_call, [fn] * len(items), list(items))
            else:
                for item in items:
                    jobs.append(ex.submit(_call, fn, item))
            log(
                f"slurm: {len(jobs)} job(s) submitted ({', '.join(j.job_id for j in jobs[:5])}"
                f"{' ...' if len(jobs) > 5 else ''}); logs in {self.folder}"
            )
            pending = list(jobs)
            while pending:  # a failed job is raised at the next poll, not after the jobs before it finish
                for job in [j for j in pending if j.done()]:
                    job.result()
                    pending.remove(job)
                if pending:
                    time.sleep(self.poll_s)
            return [j.result() for j in jobs]
        except BaseException as e:
            live = _still_running(lambda: [j for j in jobs if not j.done()], jobs)
            _cancel_all("slurm", "job", live, lambda j: j.cancel(check=False), e, log)
            raise


def make_executor(
    name: str = "local",
    *,
    out: Path,
    parallel: int = 1,
    address: Optional[str] = None,
    partition: Optional[str] = None,
    array: bool = False,
    cluster: Optional[str] = None,
    resources: Optional[Resources] = None,
) -> Executor:
    """The executor named ``name`` (local | ray | slurm) with its options; an option another executor owns is an
    error, never ignored."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{name}'")
    misplaced = [
        flag
        for flag, given, owner in (
            ("--parallel", parallel != 1, "local"),
            ("--address", address, "ray"),
            ("--partition", partition, "slurm"),
            ("--array", array, "slurm"),
        )
        if given and owner != name
    ]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)} does not apply to --executor {name}")
    if name == "local":
        return LocalExecutor(parallel, resources)
    if name == "ray":
        return RayExecutor(address, resources)
    return SlurmExecutor(Path(out) / "slurm", partition, resources, array=array, cluster=cluster)
