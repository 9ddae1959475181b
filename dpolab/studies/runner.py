"""Study runner: a grid of runs (stages x methods x settings x seeds), resumable, then a report.

A study is a list of :class:`RunSpec` built for a size (``cpu`` or ``paper``). Each run is an ordinary
``dpolab train`` run in ``<out>/runs/<run_id>``; a run whose folder holds a finished run with the same
config is skipped, an unfinished one resumes from its newest checkpoint. A run may start from another
run's final model (``init_from``), e.g. DPO from an SFT warm-up. Each run it trains gets a ``provenance.json``
(the dpolab commit and library versions that trained it, :mod:`dpolab.studies.provenance`). After the grid, the
study's ``report`` function turns the runs' summaries and metrics into markdown + PNG.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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


@dataclass
class RunResult:
    spec: RunSpec
    dir: Path
    summary: Dict[str, Any]
    metrics: List[Dict[str, Any]]
    skipped: bool
    provenance: Optional[Dict[str, Any]] = None  # provenance.json: commit and versions that trained it (None: unrecorded)

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


def run_grid(specs: Sequence[RunSpec], out: Path, *, log: Callable[[str], None] = print) -> Dict[str, RunResult]:
    """Run (or skip, or resume) every spec in order; returns results by run_id."""
    from ..engine import train
    from ..engine.checkpoint import latest_checkpoint
    from ..engine.trainer import DONE_MARKER

    results: Dict[str, RunResult] = {}
    for i, spec in enumerate(specs, start=1):
        run_dir = out / "runs" / spec.run_id
        overrides = [f"output.dir={run_dir}"]
        if spec.init_from:
            overrides.append(f"model.init_from={out / 'runs' / spec.init_from / 'final'}")
        cfg = build_config(spec.config, overrides)
        cfg_dict = cfg.to_dict()
        done = (run_dir / DONE_MARKER).exists() and _same_config(run_dir, cfg_dict)
        if done:
            log(f"[{i}/{len(specs)}] {spec.run_id}: finished earlier, skipped")
        else:
            if spec.prepare is not None:
                spec.prepare()
            resume = latest_checkpoint(run_dir) is not None and _same_config(run_dir, cfg_dict)
            cfg.output.overwrite = not resume
            log(f"[{i}/{len(specs)}] {spec.run_id}: {'resuming' if resume else 'training'}")
            t0 = time.perf_counter()
            provenance.begin(run_dir, resume=resume)
            train(cfg, resume=resume, eval_hooks=list(spec.hooks), log=lambda s: None)
            provenance.finish(run_dir)
            log(f"[{i}/{len(specs)}] {spec.run_id}: done in {time.perf_counter() - t0:.0f}s")
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        results[spec.run_id] = RunResult(spec, run_dir, summary, read_metrics(run_dir), skipped=done,
                                         provenance=provenance.read(run_dir))
    return results


def runs_table(results: Dict[str, RunResult]) -> List[List[Any]]:
    """One row per run: id, labels, steps, wall-clock, peak memory, trainable parameters."""
    rows = []
    for rid, r in results.items():
        s = r.summary
        rows.append([f"`{rid}`", s.get("mode"), s.get("steps"), f"{s.get('wall_clock_s', 0):.1f}",
                     f"{s.get('peak_memory_mb', 0):.0f}", f"{(s.get('parameters') or {}).get('trainable', 0):,}"])
    return rows


RUNS_HEADERS = ["run", "mode", "steps", "train s", "peak RSS MB", "trainable params"]
