"""Executors (issue 32, defect 13): Slurm needs a time limit (submitit's silent default is 5 minutes); a driver that
stops (a failed run, Ctrl-C, any error) cancels the Ray tasks / Slurm jobs it started, which otherwise kept training
into run folders a rerun trains again; Ray's ``ray.init(address=...)`` branch and a failing Ray task."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dpolab.errors import ConfigError
from dpolab.studies.executors import RayExecutor, Resources, make_executor


# -- Slurm: a fake submitit executor (no cluster) -------------------------------------------------------------------
class FakeJob:
    def __init__(self, job_id, outcome):
        self.job_id, self.outcome, self.cancelled = job_id, outcome, None

    def done(self, force_check=False):
        return self.outcome != "running" or self.cancelled is not None

    def result(self):
        if self.outcome == "running":
            raise AssertionError(f"job {self.job_id} is still running: result() would block")
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self, check=True):
        self.cancelled = check


class FakeSubmitit:
    def __init__(self, outcomes):
        self.outcomes, self.jobs = list(outcomes), []

    def submit(self, fn, *args):
        job = FakeJob(str(100 + len(self.jobs)), self.outcomes[len(self.jobs)])
        self.jobs.append(job)
        return job


def _slurm(tmp_path, monkeypatch, outcomes):
    pytest.importorskip("submitit")
    ex = make_executor("slurm", out=tmp_path, resources=Resources(time_min=30))
    fake = FakeSubmitit(outcomes)
    monkeypatch.setattr(ex, "_executor", lambda: fake)
    ex.poll_s = 0.01
    return ex, fake


def test_slurm_needs_a_time_limit(tmp_path):
    pytest.importorskip("submitit")
    with pytest.raises(ConfigError, match="--executor slurm needs --time MINUTES.*submitit asks Slurm for 5 minutes"):
        make_executor("slurm", out=tmp_path, cluster="local")
    ex = make_executor("slurm", out=tmp_path, cluster="local", resources=Resources(time_min=45))
    assert ex._executor().parameters["timeout_min"] == 45  # what the jobs are submitted with


def test_a_failed_slurm_job_cancels_the_others_at_once(tmp_path, monkeypatch):
    ex, fake = _slurm(tmp_path, monkeypatch, ["running", RuntimeError("run b diverged"), "running", 3])
    msgs = []
    with pytest.raises(RuntimeError, match="run b diverged"):  # raised while job 100 still runs, not after it
        ex.map(abs, [1, 2, 3, 4], log=msgs.append)
    assert [j.cancelled for j in fake.jobs] == [False, None, False, None]  # the running ones, check=False
    assert "slurm: stopping (RuntimeError: run b diverged); cancelled 2 job(s) still queued or running" in msgs[-1]


def test_an_interrupted_driver_cancels_its_slurm_jobs(tmp_path, monkeypatch):
    ex, fake = _slurm(tmp_path, monkeypatch, ["running", "running"])

    def ctrl_c(_s):
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", ctrl_c)
    msgs = []
    with pytest.raises(KeyboardInterrupt):
        ex.map(abs, [1, 2], log=msgs.append)
    assert all(j.cancelled is False for j in fake.jobs) and "stopping (interrupted); cancelled 2 job(s)" in msgs[-1]


def test_slurm_results_in_order_when_every_job_succeeds(tmp_path, monkeypatch):
    ex, fake = _slurm(tmp_path, monkeypatch, [5, 6, 7])
    assert ex.map(abs, [1, 2, 3], log=lambda s: None) == [5, 6, 7] and all(j.cancelled is None for j in fake.jobs)


# -- Ray: a fake module for the address branch and an interrupt ------------------------------------------------------
class FakeRay:
    def __init__(self, interrupt=False):
        self.inits, self.cancelled, self.interrupt = [], [], interrupt

    def is_initialized(self):
        return False

    def init(self, **kw):
        self.inits.append(kw)

    def remote(self, **opts):
        return lambda fn: type("Remote", (), {"remote": staticmethod(lambda f, item: ("ref", item))})

    def wait(self, refs, num_returns=1, timeout=None):
        if timeout == 0:  # asked which are finished: none yet
            return [], list(refs)
        if self.interrupt:
            raise KeyboardInterrupt
        return refs[:num_returns], refs[num_returns:]

    def get(self, refs):
        return [r[1] * 10 for r in refs]

    def cancel(self, ref, force=False, recursive=True):
        self.cancelled.append((ref, force))


def _ray(monkeypatch, fake, address=None):
    monkeypatch.setitem(sys.modules, "ray", fake)
    return make_executor("ray", out=Path("."), address=address)


def test_ray_joins_the_cluster_at_address(monkeypatch):
    fake = FakeRay()
    ex = _ray(monkeypatch, fake, address="ray://head:10001")
    assert isinstance(ex, RayExecutor) and ex.map(abs, [1, 2], log=lambda s: None) == [10, 20]
    assert fake.inits == [{"address": "ray://head:10001", "log_to_driver": True}]
    assert "ray (ray://head:10001;" in ex.describe()


def test_an_interrupted_driver_cancels_its_ray_tasks(monkeypatch):
    fake = FakeRay(interrupt=True)
    msgs = []
    with pytest.raises(KeyboardInterrupt):
        _ray(monkeypatch, fake).map(abs, [1, 2, 3], log=msgs.append)
    assert fake.cancelled == [(("ref", i), True) for i in (1, 2, 3)]
    assert "ray: stopping (interrupted); cancelled 3 task(s)" in msgs[-1]


# -- Ray for real: a failing task stops the driver and cancels the task still running -------------------------------
def _fail(item):
    raise ValueError(f"run {item} failed")


SLOW_S = 15  # far longer than the failing task takes to be noticed, even on loaded cores


def _slow_then_write(path):
    Path(path + ".started").write_text("")
    time.sleep(SLOW_S)
    Path(path + ".done").write_text("")
    return path


def _run(args):
    fn, arg = args
    return fn(arg)


@pytest.mark.slow
def test_a_failing_ray_task_cancels_the_rest(tmp_path):
    pytest.importorskip("ray")
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test module
    # two slots, so that the failing task never waits behind the slow one (with one, Ray may run the slow one first)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        slow = str(tmp_path / "slow")
        msgs = []
        with pytest.raises(Exception) as e:
            make_executor("ray", out=tmp_path).map(_run, [(_fail, "a"), (_slow_then_write, slow)], log=msgs.append)
        assert "run a failed" in str(e.value)
        assert "ray: stopping (" in msgs[-1] and "cancelled 1 task(s)" in msgs[-1]
        # the slow task may have been cancelled before it started, or killed while running (a worker that had just
        # picked it up can still write its start mark): either way it must never reach its end
        time.sleep(3)
        started = Path(slow + ".started")
        if started.exists():
            time.sleep(max(0.0, started.stat().st_mtime + SLOW_S + 2 - time.time()))
        assert not Path(slow + ".done").exists()
    finally:
        ray.shutdown()
