"""Study runner: a grid of runs (stages x methods x settings x seeds), resumable, then a report.

A study is a list of :class:`RunSpec` built for a size (``cpu`` or ``paper``). Each run is an ordinary
``dpolab train`` run in ``<out>/runs/<run_id>``; a run whose folder holds a finished run with the same
config is skipped, an unfinished one resumes from its newest checkpoint. A run may start from another
run's final model (``init_from``), e.g. DPO from an SFT warm-up; such a run is trained again from the start when
the run it starts from was trained again after it began (:func:`parent_retrained`). Each run it trains gets a
``provenance.json``
(the dpolab commit and library versions that trained it, :mod:`dpolab.studies.provenance`). After the grid, the
study's ``report`` (:class:`dpolab.studies.study.Study`) turns the runs' summaries and metrics into markdown + PNG.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from ..config import build_config
from ..engine.logging import read_metrics
from . import provenance


@dataclass
class RunSpec:
    run_id: str
    config: Dict[str, Any]
    labels: Dict[str, Any] = field(default_factory=dict)  # method, data, seed, ... for grouping in reports
    init_from: Optional[str] = None  # run_id whose final model this run starts from
    hooks: Sequence[Callable] = ()
    # work this run needs before it trains (e.g. build its data from an earlier run's model); called only when the
    # run is not finished yet, so it must be idempotent and should reuse what it already wrote
    prepare: Optional[Callable[[], None]] = None
    # when set, the run's data is split with this seed instead of train.seed (every seed of a grid holds out the same
    # pairs); hooks with a ``bind(cfg, eval_data)`` method are bound to the run's held-out data
    data_seed: Optional[int] = None
    # runs that must be finished before this one's ``prepare`` (e.g. the reward model whose scores its data needs)
    # besides ``init_from``
    after: Sequence[str] = ()
    # a timing run: trained with no other run of the grid beside it (after its wave's other runs, one at a time, in
    # grid order, whatever the executor's parallelism); its folder gets ALONE_FILE (executor, CPU) when it is done
    alone: bool = False


@dataclass
class RunResult:
    spec: RunSpec
    dir: Path
    summary: Dict[str, Any]
    metrics: List[Dict[str, Any]]
    skipped: bool
    provenance: Optional[Dict[str, Any]] = (
        None  # provenance.json: commit and versions that trained it (None: unrecorded)
    )

    def evals(self) -> List[Dict[str, Any]]:
        return [r for r in self.metrics if any(k.startswith("eval/") or k.startswith("probe/") for k in r)]

    def final(self, key: str) -> Optional[float]:
        v = (self.summary.get("final_eval") or {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    def series(self, key: str) -> tuple[List[float], List[float]]:
        rows = [r for r in self.metrics if isinstance(r.get(key), (int, float))]
        return [r["step"] for r in rows], [r[key] for r in rows]


def _stamp(inputs: Sequence[Path], settings: Any) -> str:
    """What a cached stage was built from: its settings and each input file's path, size and modification time."""
    files = []
    for p in inputs:
        p = Path(p)
        st = p.stat() if p.exists() else None
        files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return json.dumps({"settings": settings, "inputs": files}, sort_keys=True, default=str)


def stage_is_current(outputs: Sequence[Path], inputs: Sequence[Path], settings: Any) -> bool:
    """Whether a cached, non-training stage (data built from an earlier run's model) can be reused: every output
    exists and was built from the same ``inputs`` (files) and ``settings``. Outputs from before stamps existed are
    adopted as they are. Call :func:`mark_stage` after building."""
    outputs = [Path(o) for o in outputs]
    if not all(o.exists() for o in outputs):
        return False
    stamp = outputs[0].with_name(outputs[0].name + ".stamp")
    if not stamp.exists():
        from ..atomic import write_text

        write_text(stamp, _stamp(inputs, settings))
        return True
    return stamp.read_text(encoding="utf-8") == _stamp(inputs, settings)


def mark_stage(outputs: Sequence[Path], inputs: Sequence[Path], settings: Any) -> None:
    first = Path(outputs[0])
    from ..atomic import write_text

    write_text(first.with_name(first.name + ".stamp"), _stamp(inputs, settings))


def _same_config(run_dir: Path, cfg_dict: Dict[str, Any]) -> bool:
    """Whether the run folder holds a run of this config (``output.overwrite`` aside, which the runner sets)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return False
    try:  # through build_config, so options added to dpolab since the run was made take their defaults
        old = build_config(yaml.safe_load(saved.read_text(encoding="utf-8"))).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable or outdated config is simply not the same config
        return False
    strip = lambda d: {**d, "output": {k: v for k, v in d.get("output", {}).items() if k != "overwrite"}}  # noqa: E731
    return strip(old) == strip(cfg_dict)


def run_grid(
    specs: Sequence[RunSpec], out: Path, *, log: Callable[[str], None] = print, executor=None
) -> Dict[str, RunResult]:
    """Run (or skip, or resume) every spec; returns results by run_id. ``executor`` (:mod:`dpolab.studies.executors`;
    default: in this process, one after another) runs them: a run waits for the run it starts from (``init_from``),
    runs of one wave are independent. ``prepare`` steps run here, in order, before their wave is sent out."""
    from .executors import LocalExecutor

    provenance.loaded_code_state()  # what this process runs: fixed now, not when a later run begins
    executor = executor or LocalExecutor()
    out = Path(out)
    index = {spec.run_id: i for i, spec in enumerate(specs, start=1)}
    skipped: Dict[str, bool] = {}
    for wave in waves(specs):
        todo = []
        for spec in wave:
            if run_is_finished(spec, out):
                skipped[spec.run_id] = True
                log(f"[{index[spec.run_id]}/{len(specs)}] {spec.run_id}: finished earlier, skipped")
                continue
            if spec.prepare is not None:
                spec.prepare()
            skipped[spec.run_id] = False
            todo.append(replace(spec, prepare=None))  # what travels to a worker: no driver-side callables
        positions = {s.run_id: index[s.run_id] for s in todo}
        job = RunJob(out, len(specs), positions, executor.threads, log if executor.in_process else None)
        shared = [s for s in todo if not s.alone]
        if shared:
            executor.map(job, shared, names=[s.run_id for s in shared], log=log)
        for spec in (s for s in todo if s.alone):  # timing runs: one at a time, nothing else of the grid beside them
            executor.map(job, [spec], names=[spec.run_id], log=log)
            _record_alone(out / "runs" / spec.run_id, executor)
    return {spec.run_id: collect(spec, out, skipped[spec.run_id]) for spec in specs}


ALONE_FILE = "alone.json"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first ``model name``; else what ``platform`` says)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _record_alone(run_dir: Path, executor) -> None:
    import os
    from datetime import datetime, timezone

    from ..atomic import write_text

    rec = {
        "executor": executor.describe(),
        "threads": executor.threads,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(run_dir / ALONE_FILE, json.dumps(rec, indent=1))


def read_alone(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The record of a timing run that ran alone (:data:`ALONE_FILE`), or None."""
    path = Path(run_dir) / ALONE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def waves(specs: Sequence[RunSpec]) -> List[List[RunSpec]]:
    """The specs in groups that can run at the same time: a run comes in a later wave than the run it starts from."""
    by_id = {s.run_id: s for s in specs}
    depth: Dict[str, int] = {}

    def level(spec: RunSpec, seen: tuple = ()) -> int:
        if spec.run_id not in depth:
            parent = by_id.get(spec.init_from) if spec.init_from else None
            if spec.init_from and parent is None:
                raise ValueError(f"run '{spec.run_id}' starts from '{spec.init_from}', which is not in the grid")
            if spec.run_id in seen:
                raise ValueError(f"runs start from each other in a cycle: {' -> '.join(seen)}")
            # a run listed in ``after`` but not in the grid (a filtered grid) is finished or absent: no wait
            parents = ([parent] if parent is not None else []) + [by_id[a] for a in spec.after if a in by_id]
            depth[spec.run_id] = 1 + max((level(p, seen + (spec.run_id,)) for p in parents), default=-1)
        return depth[spec.run_id]

    out: Dict[int, List[RunSpec]] = {}
    for spec in specs:
        out.setdefault(level(spec), []).append(spec)
    return [out[k] for k in sorted(out)]


def _config_of(spec: RunSpec, out: Path):
    run_dir = out / "runs" / spec.run_id
    overrides = [f"output.dir={run_dir}"]
    if spec.init_from:
        overrides.append(f"model.init_from={out / 'runs' / spec.init_from / 'final'}")
    return run_dir, build_config(spec.config, overrides)


def run_is_finished(spec: RunSpec, out: Path) -> bool:
    """Whether the spec's run folder holds a finished run of exactly this config."""
    from ..engine.trainer import DONE_MARKER

    run_dir, cfg = _config_of(spec, Path(out))
    return (
        (run_dir / DONE_MARKER).exists()
        and _same_config(run_dir, cfg.to_dict())
        and not parent_retrained(spec, Path(out))
    )


def parent_retrained(spec: RunSpec, out: Path) -> bool:
    """Whether the run that ``spec`` starts from (``init_from``) finished after ``spec``'s run first began: it was
    trained again since (e.g. its settings changed), so this run's folder, finished or not, holds training from a
    model that no longer exists, and neither skipping nor resuming it is right. False without ``init_from`` and when
    either run has no provenance record to tell."""
    from datetime import datetime

    if not spec.init_from:
        return False
    child, parent = provenance.read(out / "runs" / spec.run_id), provenance.read(out / "runs" / spec.init_from)
    began = ((child or {}).get("attempts") or [{}])[0].get("started")
    done = (parent or {}).get("finished_at")
    if not began or not done:
        return False
    return datetime.fromisoformat(done) > datetime.fromisoformat(began)


@dataclass
class RunJob:
    """Train one spec (resuming from its newest checkpoint when it has one of the same config); picklable, so any
    executor can call it in another process. ``threads``: torch's CPU threads in that process (None: its default)."""

    out: Path
    total: int
    positions: Dict[str, int]
    threads: Optional[int] = None
    log: Optional[Callable[[str], None]] = None

    @staticmethod
    def data_of(cfg, data_seed: int) -> Dict[str, Any]:
        """``train_data`` / ``eval_data`` of a run, split with ``data_seed`` (the same held-out pairs for every
        seed)."""
        from ..engine.data_setup import prepare_data
        from ..engine.objectives import get_objective
        from ..models.load import load_tokenizer

        kind = get_objective(cfg.train.mode).data_kind
        train, evals = prepare_data(cfg.data, load_tokenizer(cfg.model), kind, data_seed, log=lambda s: None)
        return {"train_data": train, "eval_data": evals}

    def __call__(self, spec: RunSpec) -> Dict[str, Any]:
        provenance.loaded_code_state()  # a worker process: the code it is about to import is the checkout's now
        from ..engine import train
        from ..engine.checkpoint import latest_checkpoint

        log = self.log or (lambda s: print(s, flush=True))
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        run_dir, cfg = _config_of(spec, Path(self.out))
        where = f"[{self.positions.get(spec.run_id, '?')}/{self.total}] {spec.run_id}"
        stale = parent_retrained(spec, Path(self.out))
        resume = latest_checkpoint(run_dir) is not None and _same_config(run_dir, cfg.to_dict()) and not stale
        cfg.output.overwrite = not resume
        log(
            f"{where}: {'resuming' if resume else 'training'}"
            + (
                f" again from the start ({spec.init_from}, which it starts from, was trained again since)"
                if stale
                else ""
            )
        )
        t0 = time.perf_counter()
        data = self.data_of(cfg, spec.data_seed) if spec.data_seed is not None else {}
        hooks = [h.bind(cfg, data.get("eval_data")) if hasattr(h, "bind") else h for h in spec.hooks]
        provenance.begin(run_dir, resume=resume)
        train(cfg, resume=resume, eval_hooks=hooks, log=lambda s: None, **data)
        provenance.finish(run_dir)
        seconds = time.perf_counter() - t0
        log(f"{where}: done in {seconds:.0f}s")
        return {"run_id": spec.run_id, "resumed": resume, "seconds": seconds}


def collect(spec: RunSpec, out: Path, skipped: bool) -> RunResult:
    """The finished run of ``spec``, read from its folder."""
    run_dir = Path(out) / "runs" / spec.run_id
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return RunResult(
        spec, run_dir, summary, read_metrics(run_dir), skipped=skipped, provenance=provenance.read(run_dir)
    )


def runs_table(results: Dict[str, RunResult]) -> List[List[Any]]:
    """One row per run: id, labels, steps, wall-clock, peak memory, trainable parameters."""
    rows = []
    for rid, r in results.items():
        s = r.summary
        rows.append(
            [
                f"`{rid}`",
                s.get("mode"),
                s.get("steps"),
                f"{s.get('wall_clock_s', 0):.1f}",
                f"{s.get('peak_memory_mb', 0):.0f}",
                f"{(s.get('parameters') or {}).get('trainable', 0):,}",
            ]
        )
    return rows


RUNS_HEADERS = ["run", "mode", "steps", "train s", "peak RSS MB", "trainable params"]
