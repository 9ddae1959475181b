"""The pre-registered regime choice (dpolab/studies/pilot.py) on synthetic pilot results: the rule's pick, the
no-cell case, the recorded choice reused on resume, disjoint seeds and pair slices, and the report section."""

import json
from pathlib import Path

import pytest

from dpolab.data.types import DataError
from dpolab.errors import ConfigError
from dpolab.stats import compare
from dpolab.studies import pilot as P
from dpolab.studies.runner import RunResult, RunSpec

GRID = {"pref_epochs": (1, 3), "pref_lr": (1e-3, 1e-4, 3e-4)}  # declared out of order: the rule orders them


def _pilot(**kw):
    p = dict(lrs=(1e-4, 3e-4, 1e-3), epochs=(1, 3), seeds=(100, 101, 102), fallback=(1e-3, 3), fallback_why="why.")
    p.update(kw)
    return P.lr_epochs_pilot(p, "DPO", "8 pairs")


def _v(values):
    return compare(dict(enumerate(values)), 0.0, metric="Δ chosen", higher_is_better=None, label_a="x", label_b="0")


def test_cells_follow_the_rule_order_smallest_lr_then_fewest_epochs():
    rule = P.Rule("text", ("pref_lr", "pref_epochs"))
    pilot = P.Pilot(GRID, rule, (100, 101), {"pref_lr": 1e-3, "pref_epochs": 3}, "why", "DPO")
    assert [(c["pref_lr"], c["pref_epochs"]) for c in pilot.cells()] == [
        (1e-4, 1),
        (1e-4, 3),
        (3e-4, 1),
        (3e-4, 3),
        (1e-3, 1),
        (1e-3, 3),
    ]


def test_the_rule_picks_the_smallest_lr_then_fewest_epochs_whose_interval_lies_below_0():
    rule = _pilot().rule
    below, around, one_seed = _v([-1.0, -1.2, -0.9]), _v([-1.0, 0.5, -0.8]), _v([-5.0])
    assert rule.meets(below) and not rule.meets(around) and not rule.meets(one_seed)
    cells = [
        ({"pref_lr": 1e-3, "pref_epochs": 1}, below),
        ({"pref_lr": 1e-4, "pref_epochs": 3}, below),
        ({"pref_lr": 1e-4, "pref_epochs": 1}, around),
        ({"pref_lr": 3e-4, "pref_epochs": 1}, below),
    ]
    assert rule.pick(cells) == {"pref_lr": 1e-4, "pref_epochs": 3}
    assert rule.pick([(c, around) for c, _ in cells]) is None  # no cell shows the effect


def test_a_pilot_is_declared_whole():
    with pytest.raises(ValueError, match="fallback"):
        _pilot(fallback=(1e-2, 1))
    with pytest.raises(ValueError, match="two seeds"):
        _pilot(seeds=(100,))


def test_pilot_seeds_must_not_be_confirmation_seeds():
    pilot = _pilot()
    pilot.check_seeds(range(5))
    with pytest.raises(ConfigError, match=r"share \[100, 101\]"):
        pilot.check_seeds(range(102))


def test_the_pilot_slice_is_disjoint_from_the_confirmation_pairs():
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    used = rows[:30] + [{"prompt": "p35", "chosen": "c35", "rejected": "another"}]  # same pair, other rejected
    picked = P.disjoint_slice(rows, used, 9, seed=100, what="training pairs")
    assert len(picked) == 9 and not {P.row_key(r) for r in picked} & {P.row_key(r) for r in used}
    assert P.disjoint_slice(rows, used, 9, seed=100, what="x") == picked  # seeded: the same slice on resume
    with pytest.raises(DataError, match="needs 10 pairs not used by the confirmation; only 9 are left"):
        P.disjoint_slice(rows, used, 10, seed=100, what="training pairs")
    with pytest.raises(ConfigError, match="shares 1 pair"):
        P.assert_disjoint(picked[:2], [picked[1]], "held-out pairs")


# -- run_pilot with the runner replaced by synthetic results -------------------------------------------------------


def _plan(pilot):
    def specs_of(cell):
        parent = RunSpec("sft", {}, {"stage": "sft"})
        runs = [
            RunSpec(f"pilot/{pilot.cell_id(cell)}/seed{s}", {}, {"pilot": True, "seed": s, "values": dict(cell)})
            for s in pilot.seeds
        ]
        return [parent] + runs

    return P.PilotPlan(pilot, specs_of)


def _fake_grid(values, calls):
    """run_grid returning Δ chosen = values[(lr, epochs)][seed index] for every pilot run."""

    def run_grid(specs, out, log=None, executor=None):
        out_ = {}
        for spec in specs:
            calls.append(spec.run_id)
            final = {}
            if spec.labels.get("pilot"):
                cell = spec.labels["values"]
                final = {
                    "probe/delta/chosen": values[(cell["pref_lr"], cell["pref_epochs"])][spec.labels["seed"] - 100]
                }
            out_[spec.run_id] = RunResult(spec, Path(out), {"final_eval": final}, [], skipped=False)
        return out_

    return run_grid


FLAT = [0.1, -0.2, 0.05]  # no interval below 0
FALLS = [-1.0, -1.2, -0.9]  # an interval wholly below -0.5


def test_run_pilot_stops_at_the_first_cell_that_meets_the_rule_and_records_it(tmp_path, monkeypatch):
    values = {(1e-4, 1): FLAT, (1e-4, 3): FLAT, (3e-4, 1): FALLS, (3e-4, 3): FALLS, (1e-3, 1): FALLS, (1e-3, 3): FALLS}
    calls = []
    monkeypatch.setattr(P, "run_grid", _fake_grid(values, calls))
    plan = _plan(_pilot())
    choice, results = P.run_pilot(plan, tmp_path, confirmation_seeds=range(3), log=lambda s: None)
    assert choice["chosen"] == {"pref_lr": 3e-4, "pref_epochs": 1} == choice["regime"]
    assert len(choice["cells"]) == 3 and [c["meets"] for c in choice["cells"]] == [False, False, True]
    assert not any("lr0.001" in c for c in calls)  # the cells after the chosen one never ran
    assert json.loads((tmp_path / "pilot" / "choice.json").read_text()) == choice
    assert P.regime(plan, tmp_path) == {"pref_lr": 3e-4, "pref_epochs": 1}
    text = "\n".join(P.pilot_section(choice))
    assert "> " + P.LR_EPOCHS_RULE in text  # the rule, verbatim
    assert "| 0.0003 | 1 | 100: -1.00, 101: -1.20, 102: -0.90 | -1.03 |" in text
    assert "| 0.001 | 3 | not run (an earlier cell met the rule) |" in text
    assert "**Choice: lr = 0.0003, epochs = 1.**" in text and "that is the finding" not in text
    assert P.choice_line(tmp_path) == "regime chosen by the pilot: lr = 0.0003, epochs = 1"


def test_a_recorded_choice_is_reused_never_chosen_again(tmp_path, monkeypatch):
    values = {(1e-4, 1): FALLS}
    monkeypatch.setattr(P, "run_grid", _fake_grid(values, []))
    plan = _plan(_pilot())
    first, _ = P.run_pilot(plan, tmp_path, log=lambda s: None)
    assert first["chosen"] == {"pref_lr": 1e-4, "pref_epochs": 1}
    # the pilot's numbers would now choose another cell (or none): a resumed study keeps the recorded choice
    calls = []
    monkeypatch.setattr(P, "run_grid", _fake_grid({k: FLAT for k in [(1e-4, 1), (1e-4, 3)]}, calls))
    msgs = []
    again, _ = P.run_pilot(plan, tmp_path, log=msgs.append)
    assert again == first and calls == [] and any("recorded choice" in m for m in msgs)
    # another declaration (here: other seeds) is refused instead of silently choosing again
    other = _plan(_pilot(seeds=(100, 101)))
    with pytest.raises(ConfigError, match="another pilot declaration"):
        P.run_pilot(other, tmp_path, log=lambda s: None)
    assert P.regime(other, tmp_path) == {"pref_lr": 1e-3, "pref_epochs": 3}  # planning never reads a foreign choice


def test_no_cell_shows_the_effect_the_fallback_runs_and_the_report_says_so(tmp_path, monkeypatch):
    values = {(lr, ep): FLAT for lr in (1e-4, 3e-4, 1e-3) for ep in (1, 3)}
    monkeypatch.setattr(P, "run_grid", _fake_grid(values, []))
    plan = _plan(_pilot())
    choice, _ = P.run_pilot(plan, tmp_path, log=lambda s: None)
    assert choice["chosen"] is None and choice["regime"] == {"pref_lr": 1e-3, "pref_epochs": 3}
    assert len(choice["cells"]) == 6  # every cell ran
    text = "\n".join(P.pilot_section(choice))
    assert "**No cell shows the effect: that is the finding.**" in text
    assert "declared fallback cell (lr = 0.001, epochs = 3): why." in text
    assert P.choice_line(tmp_path).startswith("no pilot cell showed the effect (the finding); fallback lr = 0.001")
    assert P.choice_line(tmp_path / "elsewhere") == "no pilot choice recorded"
    assert "No pilot at this size" in "\n".join(P.pilot_section(None, declared=False))
    assert "has not chosen yet" in "\n".join(P.pilot_section(None))


def test_the_declared_rule_asks_for_a_fall_beyond_half_a_nat_not_just_below_0():
    """The first small S4 pilot met a 'below 0' rule at -0.19 (-0.27 to -0.11) and the effect did not carry over to
    the confirmation: the declared rule now needs the whole interval below -0.5 nats."""
    rule = _pilot().rule
    edge, clear = _v([-0.1855, -0.1985]), _v([-1.0, -1.2, -0.9])
    assert edge.high < 0 and not rule.meets(edge) and rule.meets(clear)
    assert P.Rule("text", ("pref_lr", "pref_epochs")).meets(edge)  # margin 0: below 0 is enough
    assert P.Pilot.of(_pilot().definition()).rule == rule  # the margin is recorded and read back
    assert "wholly below -0.5 nats" in P.LR_EPOCHS_RULE
