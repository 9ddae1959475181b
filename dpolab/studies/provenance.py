"""Provenance of study runs: which dpolab commit and which library versions trained each run.

The runner writes ``provenance.json`` in a run's folder when it starts training it (``finished: false``) and again
when training ends (``finished: true``); a resumed run keeps the earlier attempts in ``attempts``, so a run trained
by more than one commit says so. Runs finished before provenance was recorded have no file: reports say so rather
than guess. :func:`section` is the report's account of it all.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

FILE = "provenance.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate")


def _git(args: List[str], cwd: Path) -> Optional[str]:
    try:  # --no-optional-locks: never touch the index of a tree others are working in
        proc = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _package_dir() -> Path:
    from .. import __file__ as pkg_init

    return Path(pkg_init).resolve().parent


def code_state() -> Dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` of the git checkout that holds this dpolab package
    (only when the package's files are tracked there: an installed copy inside some other repository is "unknown");
    dirty = uncommitted changes (or untracked files) in the package's folder."""
    pkg = _package_dir()
    top = _git(["rev-parse", "--show-toplevel"], pkg)
    if not top or not _git(["ls-files", "--", str(pkg / "__init__.py")], Path(top)):
        return {"commit": "unknown", "dirty": None}
    commit = _git(["rev-parse", "HEAD"], Path(top)) or "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=normal", "--", str(pkg)], Path(top))
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_diff(commits: List[str], pkg: Optional[Path] = None) -> Optional[Dict[str, int]]:
    """The files of the dpolab package (``pkg``: its folder, default this package's) that differ between the first of
    ``commits`` and any other: repository-relative path -> lines changed (added + deleted, the most over those
    pairs; 0 for a binary file), sorted by path; {} when the package is the same in all of them; None when git
    cannot tell (no checkout, or a commit it does not have)."""
    pkg = Path(pkg) if pkg is not None else _package_dir()
    top = _git(["rev-parse", "--show-toplevel"], pkg)
    if not top:
        return None
    rel = Path(pkg).resolve().relative_to(Path(top).resolve()).as_posix()
    changed: Dict[str, int] = {}
    for c in commits[1:]:
        out = _git(["diff", "--numstat", commits[0], c, "--", rel], Path(top))
        if out is None:
            return None
        for line in out.splitlines():
            added, deleted, path = line.split("\t", 2)
            n = int(added) + int(deleted) if added.isdigit() and deleted.isdigit() else 0
            changed[path] = max(changed.get(path, 0), n)
    return dict(sorted(changed.items()))


def versions() -> Dict[str, str]:
    """python, dpolab and the libraries that shape a run (installed distribution versions; "not installed")."""
    from .. import __version__

    out = {"python": platform.python_version(), "dpolab": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_LOADED: Dict[int, Dict[str, Any]] = {}  # process id -> code_state() at this process's first record


def loaded_code_state() -> Dict[str, Any]:
    """:func:`code_state` as this process first saw it, then the same answer for the process's life. A process runs
    the code it imported, so a commit (or edit) made while a long study process or one of its worker processes is
    alive did not change the code that trains its later runs; reading the checkout afresh at each run would say it
    did. Keyed by process id, so a forked child reads the checkout for itself."""
    pid = os.getpid()
    if pid not in _LOADED:
        _LOADED[pid] = code_state()
    return dict(_LOADED[pid])


def current() -> Dict[str, Any]:
    """The code (as this process loaded it), the versions and the time now."""
    return {
        **loaded_code_state(),
        "versions": versions(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write(run_dir: Path, record: Mapping[str, Any]) -> None:
    from ..atomic import write_text

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(run_dir) / FILE, json.dumps(record, indent=1))


def begin(run_dir: Path, *, resume: bool) -> Dict[str, Any]:
    """Record that training of ``run_dir`` starts now (a resumed run keeps its earlier attempts; a fresh one drops
    a stale record)."""
    earlier = read(run_dir) if resume else None
    attempts = list((earlier or {}).get("attempts") or [])
    now = current()
    attempts.append(
        {
            "commit": now["commit"],
            "dirty": now["dirty"],
            "versions": now["versions"],
            "started": now["at"],
            "resumed": bool(resume),
        }
    )
    record = {
        "finished": False,
        "commit": now["commit"],
        "dirty": now["dirty"],
        "versions": now["versions"],
        "attempts": attempts,
    }
    _write(run_dir, record)
    return record


def finish(run_dir: Path) -> Dict[str, Any]:
    """Record that training of ``run_dir`` ended. The code that trained it is the code of its last attempt's start
    (what the process loaded), not the checkout's state now: a commit made while a run trains did not train it."""
    record = read(run_dir) or {"attempts": []}
    now = current()
    ran = record["attempts"][-1] if record.get("attempts") else now
    if record.get("attempts"):
        ran["finished"] = now["at"]
    record.update(
        finished=True, commit=ran["commit"], dirty=ran["dirty"], versions=ran["versions"], finished_at=now["at"]
    )
    _write(run_dir, record)
    return record


def _commits(record: Optional[Mapping[str, Any]]) -> List[str]:
    """Every commit that trained a run (its attempts, and the record's own for older records), in order, once each."""
    if not record:
        return []
    seen = [a.get("commit", "unknown") for a in record.get("attempts") or []] + [record.get("commit", "unknown")]
    return list(dict.fromkeys(seen))


def _short(commit: str) -> str:
    return commit[:12] if commit and commit != "unknown" else "unknown"


def _versions_text(v: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {v[k]}" for k in ("python", "torch", "transformers", "peft", "accelerate", "dpolab") if k in v
    )


def section(results: Mapping[str, Any]) -> List[str]:
    """The report's provenance: commits and versions of its runs (from each run's ``provenance`` record), and a
    warning when they came from more than one commit or set of versions."""
    records = {rid: getattr(r, "provenance", None) for rid, r in results.items()}
    known = {rid: rec for rid, rec in records.items() if rec}
    paragraphs: List[List[str]] = []
    commit_runs: Counter = Counter()
    for rec in known.values():
        for c in _commits(rec):
            commit_runs[c] += 1
    dirty = sorted(
        rid for rid, rec in known.items() if rec.get("dirty") or any(a.get("dirty") for a in rec.get("attempts") or [])
    )
    mixed = sorted(rid for rid, rec in known.items() if len(_commits(rec)) > 1)
    if known:
        paragraphs.append(
            [
                "dpolab commit of the runs: "
                + ", ".join(f"`{_short(c)}` ({n} run{'s' if n != 1 else ''})" for c, n in commit_runs.most_common())
                + "."
            ]
        )
        real = [c for c in commit_runs if c != "unknown"]
        if len(commit_runs) > 1:
            diff = package_diff(real) if len(real) == len(commit_runs) else None
            if diff == {} and not dirty:
                tail = (
                    ": the dpolab package is the same in all of them (`git diff` between them changes nothing under "
                    "the package's folder, only files outside it), so the training code was identical."
                )
            elif diff == {}:
                tail = (
                    ": the dpolab package is the same in all of these commits, but some runs had uncommitted changes "
                    "(below), so their code may still differ."
                )
            elif diff:
                files = list(diff.items())
                tail = (
                    ": numbers from different code may not be comparable; between them these files of the package "
                    "differ (lines changed): "
                    + ", ".join(f"`{f}` ({n})" for f, n in files[:12])
                    + (" ..." if len(files) > 12 else "")
                    + f". `git diff {_short(real[0])} <commit> -- "
                    + " ".join(f for f, _ in files[:12])
                    + "` shows what changed: edits of help text or comments "
                    "leave the numbers alone, edits of the code may not."
                )
            else:
                tail = ": numbers from different code may not be comparable."
            paragraphs.append(
                [
                    f"**These runs came from {len(commit_runs)} different dpolab commits**"
                    + (
                        " (some unknown: dpolab was not run from its git checkout)"
                        if len(real) < len(commit_runs)
                        else ""
                    )
                    + tail
                ]
            )
        if mixed:
            paragraphs.append(
                [
                    f"{len(mixed)} run(s) were resumed under a different commit than they started with: "
                    + ", ".join(f"`{rid}`" for rid in mixed[:10])
                    + (" ..." if len(mixed) > 10 else "")
                    + "."
                ]
            )
        if dirty:
            paragraphs.append(
                [
                    f"{len(dirty)} run(s) were trained with uncommitted changes in the dpolab package: the commit "
                    "alone does not pin their code."
                ]
            )
        vsets = Counter(json.dumps(rec.get("versions") or {}, sort_keys=True) for rec in known.values())
        if len(vsets) == 1:
            paragraphs.append(["Versions of every run: " + _versions_text(json.loads(next(iter(vsets)))) + "."])
        else:
            paragraphs.append(
                [f"**The runs used {len(vsets)} different sets of versions**:", ""]
                + [f"- {n} run{'s' if n != 1 else ''}: {_versions_text(json.loads(v))}" for v, n in vsets.most_common()]
            )
    unrecorded = sorted(set(records) - set(known))
    if unrecorded:
        paragraphs.append(
            [
                f"{len(unrecorded)} of {len(records)} runs have no provenance record (trained before dpolab "
                "recorded it): their commit and versions are unknown."
            ]
        )
    now = current()
    paragraphs.append(
        [
            f"This report was written by dpolab commit `{_short(now['commit'])}`"
            + (" (with uncommitted changes in the package)" if now["dirty"] else "")
            + f"; versions: {_versions_text(now['versions'])}."
        ]
    )
    lines = ["## Provenance"]
    for p in paragraphs:
        lines += ["", *p]
    return lines
