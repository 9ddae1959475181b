"""BatchPlan: the per-epoch order is computed once per epoch, and the batches are exactly those of the uncached order."""
import random

import pytest

from dpolab.engine.batching import BatchPlan

LENGTHS = [random.Random(i).randrange(5, 100) for i in range(37)]
PLANS = {
    "shuffled": dict(n_examples=37, batch_size=4, grad_accum=2, seed=3),
    "in order": dict(n_examples=37, batch_size=4, grad_accum=2, shuffle=False),
    "two processes": dict(n_examples=37, batch_size=3, grad_accum=2, num_processes=2, seed=1),
    "length grouped": dict(n_examples=37, batch_size=4, grad_accum=1, seed=5, lengths=LENGTHS, length_grouped=True),
}


def _count_orders(plan: BatchPlan) -> list:
    """Record every epoch :meth:`BatchPlan.order` is computed for."""
    calls, real = [], plan.order

    def counted(epoch):
        calls.append(epoch)
        return real(epoch)

    plan.order = counted
    return calls


@pytest.mark.parametrize("kind", list(PLANS))
def test_step_batches_are_the_uncached_order_and_each_epoch_order_is_computed_once(kind):
    plan, fresh = BatchPlan(**PLANS[kind]), BatchPlan(**PLANS[kind])
    calls = _count_orders(plan)
    epochs = 3
    steps = epochs * plan.steps_per_epoch
    gb = plan.global_batch
    for step in range(steps):
        # what the trainer does each step: the step's indices (its units), then this process's micro-batches
        idx = plan.step_indices(step)
        micros = [plan.micro_batches(step, rank) for rank in range(plan.num_processes)]
        epoch, k = divmod(step, plan.steps_per_epoch)
        assert idx == fresh.order(epoch)[k * gb: (k + 1) * gb]  # the order before memoisation
        per_micro = plan.batch_size * plan.num_processes
        for rank, mine in enumerate(micros):
            want = [idx[a * per_micro: (a + 1) * per_micro][rank * plan.batch_size: (rank + 1) * plan.batch_size]
                    for a in range(plan.grad_accum)]
            assert mine == [m for m in want if m]
    assert calls == list(range(epochs))  # once per epoch, not twice per step


def test_a_resumed_plan_gives_the_same_batches_and_a_changed_plan_a_new_order():
    a = BatchPlan(37, 4, 2, seed=3)
    straight = [a.step_indices(s) for s in range(12)]
    resumed = BatchPlan(37, 4, 2, seed=3)  # a resumed run's plan starts at a later step, with an empty cache
    assert [resumed.step_indices(s) for s in range(7, 12)] == straight[7:]
    before = a.step_indices(0)
    a.seed = 4  # the cache is keyed by the settings the order depends on
    assert a.step_indices(0) == BatchPlan(37, 4, 2, seed=4).step_indices(0) != before
    # the returned indices are a copy: changing them does not change the plan
    a.step_indices(0).clear()
    assert a.step_indices(0) == BatchPlan(37, 4, 2, seed=4).step_indices(0)
