"""BatchPlan: the per-epoch order is computed once per epoch, and the batches are exactly those of the uncached
order."""

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
        assert idx == fresh.order(epoch)[k * gb : (k + 1) * gb]  # the order before memoisation
        per_micro = plan.batch_size * plan.num_processes
        for rank, mine in enumerate(micros):
            want = [
                idx[a * per_micro : (a + 1) * per_micro][rank * plan.batch_size : (rank + 1) * plan.batch_size]
                for a in range(plan.grad_accum)
            ]
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


def test_a_set_smaller_than_one_global_batch_gives_every_rank_the_same_micro_batches():
    """The issue's case: 10 examples, batch 4, accumulation 2, two processes (global batch 16) used to give rank 0
    micro-batches of [4, 2] and rank 1 [4]: rank 1 then skipped a batch-level loss's gather and the run hung."""
    two = BatchPlan(10, 4, 2, num_processes=2)
    ranks = [two.micro_batches(0, r) for r in range(2)]
    assert [len(m) for m in ranks[0]] == [len(m) for m in ranks[1]] == [4, 1]
    # gathered micro-batch by micro-batch in rank order: the one-process plan with the same global batch
    one = BatchPlan(10, 8, 2)
    assert [ranks[0][a] + ranks[1][a] for a in range(2)] == one.micro_batches(0, 0)
    assert two.step_indices(0) == one.step_indices(0) and two.steps_per_epoch == one.steps_per_epoch == 1


@pytest.mark.parametrize(
    "n, bs, accum, world",
    [(10, 4, 2, 2), (9, 4, 2, 2), (7, 2, 3, 3), (5, 8, 1, 4), (3, 1, 4, 3), (37, 3, 2, 2), (30, 2, 4, 3)],
)
def test_every_rank_gets_as_many_micro_batches_of_the_same_sizes(n, bs, accum, world):
    plan = BatchPlan(n, bs, accum, num_processes=world, seed=2)
    for step in range(2 * plan.steps_per_epoch):
        idx = plan.step_indices(step)
        ranks = [plan.micro_batches(step, r) for r in range(world)]
        sizes = [[len(m) for m in mine] for mine in ranks]
        assert all(s == sizes[0] for s in sizes) and all(k > 0 for k in sizes[0]), sizes
        assert len(sizes[0]) <= accum and max(sizes[0]) <= bs
        gathered = [i for a in range(len(sizes[0])) for mine in ranks for i in mine[a]]
        assert gathered == idx  # the step's order, every example once
        assert len(idx) > n - world if n < plan.global_batch else len(idx) == plan.global_batch


def test_fewer_examples_than_processes_is_a_clear_error():
    from dpolab.engine.errors import TrainError

    with pytest.raises(TrainError, match="3 training example.*4 processes"):
        BatchPlan(3, 1, 1, num_processes=4)
    assert sorted(BatchPlan(3, 4, 1).step_indices(0)) == [0, 1, 2]  # one process takes any size


@pytest.mark.parametrize("n, bs, world", [(10, 4, 2), (9, 2, 3), (3, 4, 2), (16, 8, 2), (0, 4, 2)])
def test_eval_batches_share_out_one_process_batches(n, bs, world):
    from dpolab.engine.batching import eval_batches, iterate_in_batches

    shares = [eval_batches(n, bs, r, world) for r in range(world)]
    merged = sorted(b for share in shares for b in share)
    assert merged == list(enumerate(iterate_in_batches(list(range(n)), bs))) == eval_batches(n, bs)
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
