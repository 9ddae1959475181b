"""The study registry and the Study protocol: what `dpolab study` relies on, without training anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpolab import studies
from dpolab.errors import ConfigError
from dpolab.studies.study import Study


class _Sized(Study):
    name, title, summary = "sized", "Sized", "a study with sizes only"
    sizes = {"cpu": {"n": 1}, "small": {"n": 2, "what": "half"}}
    smoke, smoke_small = {"n": 0}, {"n": 0, "what": "small smoke"}
    small_cuts = "Cut at this size: {what}, n = {n}."


def test_settings_per_size_and_the_smoke_scale_of_each_code_path():
    s = _Sized()
    assert s.settings("cpu", False) == {"n": 1} and s.settings("small", False)["n"] == 2
    assert s.settings("cpu", True) == {"n": 0} and s.settings("paper", True) == {"n": 0}
    assert s.settings("small", True)["what"] == "small smoke"  # --size small --smoke keeps the small code path
    assert s.cuts_lines("small") == ["Cut at this size: half, n = 2.", ""] and s.cuts_lines("cpu") == []
    assert s.budget("small", 3) is None  # no measured costs: no budget


def test_resolve_checks_the_size_and_fills_the_defaults():
    s = _Sized()
    assert s.resolve("cpu", None, False, None) == (3, Path("runs/study-sized-cpu"))
    assert s.resolve("small", None, True, None) == (1, Path("runs/study-sized-small-smoke"))
    assert s.resolve("cpu", 5, False, "x/y") == (5, Path("x/y"))
    with pytest.raises(ConfigError, match="study 'sized' has sizes cpu, small, not 'paper'"):
        s.resolve("paper", None, False, None)


def test_the_packaged_studies_are_study_objects_with_the_registry_summary():
    # the registry keeps each packaged study's summary so that `dpolab study --help` imports no study module
    for name, summary in studies.list_studies():
        study = studies.get_study(name)
        assert isinstance(study, Study) and study.name == name and study.summary == summary
        assert study.title and set(study.sizes) == {"cpu", "small", "paper"}
        assert studies.get_study(name) is study  # loaded once, then the registry holds the object


def test_register_refuses_a_nameless_or_taken_name_and_get_study_an_unknown_one(monkeypatch):
    monkeypatch.setattr(studies, "STUDIES", dict(studies.STUDIES))
    with pytest.raises(ValueError, match="already registered"):
        studies.register(type("Again", (_Sized,), {"name": "dpop"})())
    with pytest.raises(ValueError, match="needs a name"):
        studies.register(Study())
    assert studies.register(_Sized()).name == "sized" and ("sized", "a study with sizes only") in studies.list_studies()
    with pytest.raises(ConfigError, match="unknown study 'nope'; valid: dpop, madpo, sft-dpo, sized, squeeze"):
        studies.get_study("nope")
