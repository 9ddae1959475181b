"""The same grid gives the same per-run results on every executor: local (in process, and worker processes), Ray (a
local cluster started here) and Slurm through submitit (its local executor). Missing packages are one-line errors."""

from __future__ import annotations

import sys

import pytest
from compare_helpers import final_metrics, tiny_options

from dpolab.errors import MissingPackageError, UserError
from dpolab.studies.compare import run_compare
from dpolab.studies.executors import Resources, make_executor

GRID = dict(methods=["dpo", "ipo"], seeds=1)


@pytest.fixture(scope="module")
def local_finals(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "cmp"
    run_compare(tiny_options(out, **GRID), log=lambda s: None)
    finals = final_metrics(out)
    assert len(finals) == 2 and all("probe/delta/chosen" in f and "eval/compare/kl" in f for f in finals.values())
    return finals


@pytest.mark.slow
def test_local_worker_processes_match(tmp_path, local_finals):
    out = tmp_path / "cmp"
    run_compare(tiny_options(out, parallel=2, **GRID), log=lambda s: None)
    assert final_metrics(out) == local_finals


@pytest.mark.slow
def test_ray_matches_local(tmp_path, local_finals):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "cmp"
        msgs = []
        run_compare(tiny_options(out, executor="ray", **GRID), log=msgs.append)
        assert any("ray: 2 task(s) submitted" in m for m in msgs)
        assert final_metrics(out) == local_finals
        assert "executor: ray (local cluster; per run 1 CPU, 0 GPU)" in (out / "report.md").read_text()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_slurm_path_through_submitit_local(tmp_path, local_finals):
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    msgs = []
    run_compare(
        tiny_options(out, executor="slurm", cluster="local", partition="debug", time=10, **GRID), log=msgs.append
    )
    assert any("slurm: 2 job(s) submitted" in m for m in msgs)
    assert final_metrics(out) == local_finals
    assert list((out / "slurm").glob("*_log.out"))  # submitit's own job logs, in the comparison's folder


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingPackageError, match=r"pip install ray"):
        make_executor("ray", out=tmp_path)
    with pytest.raises(MissingPackageError, match=r"pip install submitit"):
        make_executor("slurm", out=tmp_path)
    with pytest.raises(UserError, match="--gpus apply to --executor ray or slurm"):
        make_executor("local", out=tmp_path, resources=Resources(gpus=1))


@pytest.mark.slow
def test_slurm_job_array_through_submitit_local(tmp_path):
    pytest.importorskip("submitit")
    ex = make_executor("slurm", out=tmp_path, array=True, cluster="local", resources=Resources(cpus=1, time_min=5))
    assert ex.map(abs, [-1, -2, 3], log=lambda s: None) == [1, 2, 3]
    assert "one job array" in ex.describe()


def test_study_takes_the_same_executor_flags(tmp_path, capsys):
    from dpolab.cli import main

    rc = main(["study", "dpop", "--smoke", "--out", str(tmp_path / "s"), "--executor", "slurm", "--parallel", "2"])
    assert rc == 2 and "--parallel does not apply to --executor slurm" in capsys.readouterr().err
