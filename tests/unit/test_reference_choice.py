"""The one rule that picks a run's kind of reference (``reference.mode``, ``auto`` above all) and its cost figures:
every branch, so a change in what a run gets shows here."""

from __future__ import annotations

import pytest

from dpolab.models.reference import KINDS, ReferenceCost, ReferenceSetupError, choose_reference, reference_cost

CHEAP_TABLE = ReferenceCost(live_examples=100, once_examples=100)  # a table scores no more than live would: precompute
DEAR_TABLE = ReferenceCost(live_examples=99, once_examples=100)  # a few steps: stay live


def _kind(mode, **kw):
    return choose_reference(mode, **{"separate": False, "lora": False, **kw}).kind


def test_cost_figures_count_every_example_a_live_reference_scores():
    # 10 steps of 4 x 2 x 3 examples, 5 held-out examples scored at steps 3, 6, 9, at the start and at the end
    c = reference_cost(steps=10, examples_per_step=24, eval_every=3, eval_at_start=True, n_train=50, n_eval=5)
    assert c == ReferenceCost(live_examples=10 * 24 + 5 * 5, once_examples=55)
    c = reference_cost(steps=10, examples_per_step=24, eval_every=0, eval_at_start=False, n_train=50, n_eval=5)
    assert c == ReferenceCost(live_examples=240 + 5, once_examples=55)  # only the final evaluation


@pytest.mark.parametrize(
    "lora, separate, live",
    [(False, False, "copy"), (True, False, "adapter"), (False, True, "separate"), (True, True, "separate")],
)
def test_auto_precomputes_when_no_dearer_else_stays_live(lora, separate, live):
    assert _kind("auto", lora=lora, separate=separate, cost=CHEAP_TABLE) == "precomputed"
    assert _kind("auto", lora=lora, separate=separate, cost=DEAR_TABLE) == live


def test_auto_says_what_it_chose():
    assert choose_reference("auto", separate=False, lora=False, cost=CHEAP_TABLE).note == (
        "reference: log-probs precomputed once (reference.mode=auto; set reference.mode=copy, adapter or precomputed "
        "to choose)"
    )
    assert choose_reference("auto", separate=False, lora=True, cost=DEAR_TABLE).note.startswith(
        "reference: live adapter (reference.mode=auto;"
    )
    assert choose_reference("copy", separate=False, lora=False, cost=CHEAP_TABLE).note is None  # an explicit mode


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("cost", [CHEAP_TABLE, DEAR_TABLE, None])
def test_auto_with_tr_dpo_takes_the_copy_it_can_move(lora, cost):
    choice = choose_reference("auto", separate=False, lora=lora, sync_every=2, cost=cost)
    assert choice.kind == "copy" and "TR-DPO" in choice.note


def test_auto_with_tr_dpo_and_a_separate_model_is_left_to_the_refusal():
    # the separate model (or its table) cannot follow the policy: the engine refuses it with its own message
    assert _kind("auto", separate=True, sync_every=2, cost=DEAR_TABLE) == "separate"
    assert _kind("auto", separate=True, sync_every=2, cost=CHEAP_TABLE) == "precomputed"


@pytest.mark.parametrize(
    "lora, separate, live", [(False, False, "copy"), (True, False, "adapter"), (True, True, "separate")]
)
def test_a_live_only_objective_never_gets_a_table(lora, separate, live):
    """KTO: no cost figures, so ``auto`` is live however long the run."""
    choice = choose_reference("auto", separate=separate, lora=lora, cost=None)
    assert choice.kind == live and "needs a live reference" in choice.note
    with pytest.raises(ReferenceSetupError, match="needs a live reference"):
        _kind("precomputed", lora=lora, separate=separate, cost=None)


@pytest.mark.parametrize(
    "mode, lora, separate, kind",
    [
        ("copy", False, False, "copy"),
        ("copy", True, False, "copy"),
        ("adapter", True, False, "adapter"),
        ("precomputed", False, False, "precomputed"),
        ("precomputed", True, True, "precomputed"),
        ("copy", False, True, "separate"),
        ("adapter", True, True, "separate"),  # a named model stands in for both
    ],
)
def test_an_explicit_mode_is_kept(mode, lora, separate, kind):
    for cost in (CHEAP_TABLE, DEAR_TABLE):
        assert _kind(mode, lora=lora, separate=separate, cost=cost) == kind


def test_impossible_modes_are_refused():
    with pytest.raises(ReferenceSetupError, match="adapter needs a LoRA policy"):
        _kind("adapter", cost=CHEAP_TABLE)
    with pytest.raises(ReferenceSetupError, match="unknown reference mode 'sometimes'"):
        _kind("sometimes", cost=CHEAP_TABLE)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_resumed_run_keeps_its_recorded_kind(kind):
    """Whatever ``auto`` would say now (another length, another cost), a checkpoint's kind comes back, silently."""
    for cost in (CHEAP_TABLE, DEAR_TABLE):
        choice = choose_reference("auto", separate=False, lora=True, cost=cost, record={"mode": kind})
        assert (choice.kind, choice.note) == (kind, None)
    with pytest.raises(ReferenceSetupError, match="unknown reference mode"):
        choose_reference("auto", separate=False, lora=False, cost=CHEAP_TABLE, record={"mode": "gone"})
