"""The interface every packaged study implements: :class:`Study` (settings per size, plan, report, budget).

``dpolab study NAME`` asks the registry (:func:`dpolab.studies.get_study`) for the study object and calls only what
is declared here, so a new study is a :class:`Study` subclass plus a registry entry (or
:func:`dpolab.studies.register`), never an edit of the runner (:mod:`dpolab.studies.run`) or of the dry run
(:mod:`dpolab.studies.budget`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .runner import RunResult, RunSpec


class Study:
    """A packaged study.

    A subclass sets :attr:`name`, :attr:`title`, :attr:`summary` and the settings of each size (:attr:`sizes`, plus
    :attr:`smoke` and :attr:`smoke_small`: the same code paths at a few steps), and implements :meth:`plan` and
    :meth:`report`; :meth:`budget` and :attr:`small_cuts` are optional.
    """

    name: str = ""  # as in `dpolab study NAME`
    title: str = ""  # the report's heading
    summary: str = ""  # one line for `dpolab study --help`
    sizes: Mapping[str, Dict[str, Any]] = {}  # size (cpu, small, paper) -> settings
    smoke: Dict[str, Any] = {}  # the cpu / paper code path at a few steps (`--smoke`)
    smoke_small: Dict[str, Any] = {}  # the small size's code path (its model) at a few steps (`--size small --smoke`)
    # what the small size cuts against the paper size, formatted with the small size's settings; the report says it
    small_cuts: str = ""

    def settings(self, size: str, smoke: bool) -> Dict[str, Any]:
        """The settings a run of ``size`` uses (``smoke``: the size's code path at a few steps; ``small`` keeps its
        model)."""
        if smoke:
            return self.smoke_small if size == "small" else self.smoke
        return self.sizes[size]

    def plan(
        self, size: str, seeds: int, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None
    ) -> List[RunSpec]:
        """The grid of runs of ``size`` for ``seeds`` seeds (``out``: the study folder, where stages cache data)."""
        raise NotImplementedError

    def pilot(self, size: str, smoke: bool = False, data_dir: Optional[str] = None, out: Optional[Path] = None):
        """The size's pre-registered regime choice (:class:`dpolab.studies.pilot.PilotPlan`), which the runner runs
        (:func:`dpolab.studies.pilot.run_pilot`) before :meth:`plan`, so that :meth:`plan` reads the recorded regime;
        None: no pilot."""
        return None

    def report(self, results: Dict[str, RunResult], out: Path, size: str) -> List[str]:
        """The report's body (markdown lines) from the finished runs; plots are written into ``out``."""
        raise NotImplementedError

    def budget(self, size: str, seeds: int = 3) -> Optional[list]:
        """The size's stages with measured seconds per unit (:class:`dpolab.studies.budget.Stage`); None without
        measurements (only the small size's are measured: :meth:`small_budget`)."""
        return self.small_budget(self.sizes["small"], seeds) if size == "small" and "small" in self.sizes else None

    def small_budget(self, s: Dict[str, Any], seeds: int) -> Optional[list]:
        """The small size's stages, from its settings ``s`` and the costs in :data:`dpolab.studies.budget.MEASURED`."""
        return None

    def cuts_lines(self, size: str) -> List[str]:
        """The paragraph (and a blank line) on what the small size cuts; nothing at other sizes."""
        if size != "small" or not self.small_cuts:
            return []
        return [self.small_cuts.format(**self.sizes["small"]), ""]

    def resolve(self, size: str, seeds: Optional[int], smoke: bool, out: Optional[str]) -> Tuple[int, Path]:
        """(seeds, study folder) of an invocation: checks the size; 3 seeds (1 with ``smoke``) and
        ``runs/study-NAME-SIZE[-smoke]`` unless given."""
        if size not in self.sizes:
            from ..errors import ConfigError

            raise ConfigError(f"study '{self.name}' has sizes {', '.join(self.sizes)}, not '{size}'")
        seeds = seeds if seeds is not None else (1 if smoke else 3)
        return seeds, Path(out or f"runs/study-{self.name}-{size}{'-smoke' if smoke else ''}")
