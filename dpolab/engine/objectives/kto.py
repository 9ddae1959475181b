"""KTO on unpaired rows (``train.mode=kto``): prompt, completion and a boolean label, as TRL's ``KTOTrainer``.

The loss is :func:`dpolab.losses.kto.kto_loss` (``kto.beta``, ``kto.desirable_weight``, ``kto.undesirable_weight``),
its objective the mean over rows. Its KL estimate ``z0`` comes from mismatched pairs: each row's prompt followed by the
completion of the row before it (the first row takes the last row's), TRL's rotation, the completion cut to fit
``data.max_length`` after the prompt. Unlike TRL, a row whose predecessor has the same prompt (the chosen and rejected
rows of one pair under ``data.unpaired_from_pairs``, or a repeated prompt) looks further back, to the nearest row with
another prompt (:func:`crossing_sources`): otherwise half of those pairs would be matched, biasing ``z0``.

Which rows: TRL rotates and averages within each device's micro-batch. Here the batch is the optimiser step, like
every statistic in dpolab: :meth:`KTOObjective.begin_step` rotates over all the step's rows in the step's order
(micro-batch by micro-batch, each one's processes in rank order; the processes exchange their completions' token ids),
each process scores its own rows' mismatched pairs without gradients (policy and reference), and the (sum, count) of
every process is gathered; each micro-batch's loss then uses that one ``z0``. The step's rows and their order do not
depend on how they are split, so ``grad_accum`` micro-batches and several processes give exactly the gradient of one
batch of all the rows. With one process and ``grad_accum=1`` this is TRL's estimate. Evaluation takes ``z0`` over the
whole eval set (rotated in its order), so eval metrics do not depend on ``eval.batch_size``. Fewer than 2 rows have no
mismatched pair: ``z0`` is then 0 (a step of fewer than 2 rows is refused at set-up; only an epoch's last, short step
of one row can have one).

The reference is live (a frozen copy, the adapter-disabled policy under LoRA, or ``reference.name_or_path``): a
precomputed table is looked up per example, but a mismatched pair exists only in its step. ``reference.sync_every``
(TR-DPO, TRL's ``sync_ref_model``) moves a frozen copy toward the policy, as in preference training
(``reference.mode=auto`` then takes the copy, under LoRA too). Probes do not apply.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from ...config import DataConfig
from ...data.batches import LabelledRowBatch, PairBatch
from ...data.collate import collate_unpaired_fast
from ...data.types import DataError, TokenizedUnpaired
from ...losses.kto import kto_kl, kto_loss
from ...models.fastpath import logps_for_batch
from ...models.reference import Reference
from ..data_kinds import PREFERENCE_PAIRS, DataKind
from ..errors import TrainError
from .base import MicroResult, Objective, RunContext
from .with_reference import WithReference


class UnpairedRows(DataKind):
    """Prompt, completion and a boolean label; with ``data.unpaired_from_pairs`` each preference pair gives two rows."""

    name = "unpaired"
    pairs_setting = "data.unpaired_from_pairs=true"

    def load(self, source, tokenizer, **options):
        from ...data.dataset import load_unpaired_data

        return load_unpaired_data(source, tokenizer, **options)

    def task_rows(self, data: DataConfig, seed: int, tokenizer=None):
        raise DataError(
            f"built-in task '{data.task}' gives preference pairs; set data.unpaired_from_pairs=true to "
            f"split each pair into a desirable and an undesirable row"
        )

    def derived_from(self, data: DataConfig) -> Optional[DataKind]:
        return PREFERENCE_PAIRS if data.unpaired_from_pairs else None

    def convert(self, items: List[Any], data: DataConfig, split: str) -> List[TokenizedUnpaired]:
        return pairs_to_unpaired(items)


def pairs_to_unpaired(pairs) -> List[TokenizedUnpaired]:
    """Unpaired (KTO) rows from tokenised pairs: each pair's chosen response (label True), then its rejected one
    (label False), after the same prompt."""
    return [
        TokenizedUnpaired(p.prompt_ids, ids, label, dict(p.meta))
        for p in pairs
        for ids, label in ((p.chosen_ids, True), (p.rejected_ids, False))
    ]


class KTOObjective(WithReference, Objective):
    name = "kto"
    data_kind = UnpairedRows()

    def __init__(self, cfg):
        super().__init__(cfg)
        k = cfg.kto
        problems = []  # refused before any data or model loads
        if cfg.eval.probes:
            problems.append(
                "eval.probes needs a policy trained on preference pairs; it is not available in train.mode=kto"
            )
        if cfg.reference.mode in ("none", "precomputed"):
            problems.append(
                f"reference.mode={cfg.reference.mode} is not available in train.mode=kto: KTO needs a live "
                f"reference (its KL estimate scores mismatched pairs that exist only within a step); use auto, "
                f"copy, or adapter under LoRA"
            )
        if k.desirable_weight == 0 and k.undesirable_weight == 0:
            problems.append("kto.desirable_weight and kto.undesirable_weight are both 0: the run would train nothing")
        if problems:
            raise TrainError("; ".join(problems))
        self.reference: Optional[Reference] = None
        self._collate = None
        self._gather = self._gather_object = None
        self._rank = 0
        self._device = torch.device("cpu")
        self._max_len = cfg.data.max_length
        self._eval_set: Optional[Sequence] = None
        self._eval_kl: Optional[torch.Tensor] = None

    # -- data -----------------------------------------------------------------------------------------------------
    def length(self, example) -> int:
        return len(example.prompt_ids) + len(example.completion_ids)

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> LabelledRowBatch:
        return collate_unpaired_fast(items, pad_id, layout, hidden_size=hidden_size)  # with its rows: begin_step

    def mismatched(self, rows: Sequence, completions: Optional[Sequence] = None) -> List[TokenizedUnpaired]:
        """Each row's prompt followed by ``completions[k]`` (default: the completion of the nearest row before it in
        ``rows`` with another prompt, cyclically: :func:`crossing_sources`), cut to fit ``data.max_length``."""
        if completions is None:
            src = crossing_sources([r.prompt_ids for r in rows])
            completions = [rows[src[k]].completion_ids for k in range(len(rows))]
        out = []
        for row, other in zip(rows, completions):
            room = max(1, self._max_len - len(row.prompt_ids))
            out.append(TokenizedUnpaired(row.prompt_ids, list(other[:room]), row.label, dict(row.meta)))
        return out

    def _step_completions(self, batches: List[LabelledRowBatch]) -> Optional[List[Any]]:
        """For each of this process's rows of the step, the completion of the nearest row before it with another
        prompt in the step's order (micro-batch by micro-batch, each one's processes in rank order:
        dpolab/engine/batching.py), cyclically (:func:`crossing_sources`); None when the step has fewer than 2 rows."""
        mine = [[(r.prompt_ids, r.completion_ids) for r in b.examples] for b in batches]
        every = [mine] if self._gather_object is None else self._gather_object([mine])
        rank = 0 if self._gather_object is None else self._rank
        flat: List[Any] = []
        where: Dict[tuple, int] = {}
        for a in range(max(len(m) for m in every)):
            for r, m in enumerate(every):
                for i, c in enumerate(m[a] if a < len(m) else []):
                    if r == rank:
                        where[(a, i)] = len(flat)
                    flat.append(c)
        if len(flat) < 2:
            return None
        src = crossing_sources([p for p, _ in flat])
        return [flat[src[where[(a, i)]]][1] for a, b in enumerate(batches) for i in range(len(b.examples))]

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, run: RunContext) -> None:
        super().setup(run)
        acc = run.accelerator
        t = self.cfg.train
        if t.batch_size * t.grad_accum * acc.num_processes < 2:
            raise TrainError(
                "train.mode=kto estimates its KL term from mismatched pairs within each optimiser step: it "
                "needs train.batch_size * train.grad_accum * processes >= 2"
            )
        self._collate = run.parts.collate
        self._device = acc.device
        self._gather = acc.gather if acc.num_processes > 1 else None
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            self._gather_object, self._rank = gather_object, acc.process_index
        self._max_len = max(2, min(self.cfg.data.max_length, run.parts.max_positions))
        self.reference = self.build_reference(run)  # no cost figures: live only (mismatched pairs live in a step)
        if run.is_main:
            run.log(self._balance_note(run.train_data))

    def _balance_note(self, rows: Sequence) -> str:
        n_d = sum(1 for r in rows if r.label)
        n_u = len(rows) - n_d
        k = self.cfg.kto
        note = f"kto: {n_d} desirable and {n_u} undesirable training rows"
        if not n_d or not n_u:
            return note + f"; with no {'desirable' if not n_d else 'undesirable'} row only one side of the loss trains"
        ratio = k.desirable_weight * n_d / max(1e-12, k.undesirable_weight * n_u)
        if not 1.0 <= ratio <= 4 / 3:  # the range the KTO paper recommends (its Eq. 8)
            note += (
                f"; desirable_weight * {n_d} / (undesirable_weight * {n_u}) = {ratio:.2f} is outside the KTO "
                f"paper's [1, 4/3]: e.g. kto.desirable_weight in [{k.undesirable_weight * n_u / n_d:.2f}, "
                f"{4 / 3 * k.undesirable_weight * n_u / n_d:.2f}] or kto.undesirable_weight in "
                f"[{0.75 * k.desirable_weight * n_d / n_u:.2f}, {k.desirable_weight * n_d / n_u:.2f}]"
            )
        return note

    # -- log-probs --------------------------------------------------------------------------------------------------
    def _ref_logps(self, batch: LabelledRowBatch) -> torch.Tensor:
        # a live reference scores the batch's rows as the "chosen" half of a batch with no "rejected" half
        return self.reference.logps(PairBatch.one_sided(batch), self.autocast)[0]

    def kl_estimate(self, model, rows: Sequence, chunk: int) -> torch.Tensor:
        """``z0`` over ``rows`` alone (rotated in their order), ``chunk`` rows at a time, without gradients."""
        return self._score_kl(model, self.mismatched(rows) if len(rows) >= 2 else [], chunk)

    def _score_kl(self, model, pairs: Sequence, chunk: int, gather=None) -> torch.Tensor:
        """``z0``: the mismatched ``pairs`` scored by the policy and the reference (no gradients), their mean with
        every process's (``gather``), clamped at 0."""
        pol, ref = [], []
        with torch.no_grad():
            for s in range(0, len(pairs), chunk):
                b = self._collate(list(range(s, min(s + chunk, len(pairs)))), pairs)
                with self.autocast():
                    pol.append(logps_for_batch(model, b, logits=self.cfg.train.logits).sums.float())
                ref.append(self._ref_logps(b).float())
        empty = torch.zeros(0, device=self._device)
        return kto_kl(torch.cat(pol) if pol else empty, torch.cat(ref) if ref else empty, all_gather=gather)

    # -- a micro-batch --------------------------------------------------------------------------------------------
    def begin_step(self, model, batches: List[LabelledRowBatch], step: int) -> List[torch.Tensor]:
        """``z0`` of the whole step (every micro-batch, every process), before any of its forwards: every
        micro-batch's state."""
        completions = self._step_completions(batches)
        rows = [r for b in batches for r in b.examples]
        pairs = self.mismatched(rows, completions) if completions is not None else []
        kl = self._score_kl(model, pairs, max(len(b.examples) for b in batches), self._gather)
        return [kl] * len(batches)

    def forward(
        self, model, batch: LabelledRowBatch, *, training: bool, state: Optional[torch.Tensor] = None
    ) -> MicroResult:
        rows = batch.examples
        if training and state is not None:  # the step's z0 (begin_step)
            kl = state
        elif not training and self._eval_set is not None:
            if self._eval_kl is None:  # once per evaluation, with the evaluated model
                self._eval_kl = self.kl_estimate(model, self._eval_set, self.cfg.eval.batch_size)
            kl = self._eval_kl
        else:  # a batch on its own (outside the loop): its own rows
            kl = self.kl_estimate(model, rows, len(rows))
        with self.autocast():
            lp = logps_for_batch(model, batch, logits=self.cfg.train.logits)
        policy = lp.sums
        ref = self._ref_logps(batch).to(policy.dtype)
        k = self.cfg.kto
        out = kto_loss(
            policy,
            ref,
            batch.label,
            kl=kl,
            beta=k.beta,
            desirable_weight=k.desirable_weight,
            undesirable_weight=k.undesirable_weight,
        )
        labels = batch.label
        metrics: Dict[str, Any] = {
            "loss": out.metrics["loss"],
            "kl": out.kl,
            "_kto": (out.chosen_rewards, out.rejected_rewards, policy.detach()[labels], policy.detach()[~labels]),
        }
        return MicroResult(out.losses.sum(), float(len(rows)), metrics)

    def set_statistics(self, rows: List[Dict[str, Any]]) -> Dict[str, float]:
        """Rewards and log-probs averaged over the desirable rows and over the undesirable rows of a step (every
        process's) or of an evaluation, not over micro-batch means (which would weight them by micro-batch size).
        Every process returns the same keys: the step's metrics are then reduced across processes key by key."""
        rc, rr, lc, lr = (torch.cat([r["_kto"][j].double().cpu() for r in rows if "_kto" in r]) for j in range(4))
        sums = torch.stack(
            [rc.sum(), rc.new_tensor(rc.numel()), rr.sum(), rr.new_tensor(rr.numel()), lc.sum(), lr.sum()]
        )
        if self._gather is not None and self._eval_set is None:  # a training step: over every process's rows
            sums = self._gather(sums.to(self._device)).reshape(-1, 6).sum(0).cpu()
        out: Dict[str, float] = {}
        for side, total, n, logps in (("chosen", sums[0], sums[1], sums[4]), ("rejected", sums[2], sums[3], sums[5])):
            if n > 0:
                out[f"rewards/{side}"] = float(total / n)
                out[f"logps/{side}"] = float(logps / n)
        if "rewards/chosen" in out and "rewards/rejected" in out:
            out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out

    # -- evaluation -----------------------------------------------------------------------------------------------
    @contextmanager
    def evaluation(self, eval_data: Sequence) -> Iterator[None]:
        self._eval_set, self._eval_kl = eval_data, None
        try:
            yield
        finally:
            self._eval_set, self._eval_kl = None, None

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return self.reference_state()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.load_reference_state(state)


def crossing_sources(prompts: Sequence[Sequence[int]]) -> List[int]:
    """For each row k, the row whose completion its mismatched pair takes: the nearest row before it (cyclically, row
    0 looking at the last rows) whose prompt differs from row k's, so that no pair puts a completion after its own
    prompt (``data.unpaired_from_pairs`` places a prompt's chosen and rejected rows side by side, and a data set can
    repeat a prompt). Row k-1 when every row has the same prompt (no pair can cross prompts). Linear time: when row
    k-1 shares row k's prompt, row k's source is row k-1's."""
    n = len(prompts)
    keys = [tuple(p) for p in prompts]
    src: List[Optional[int]] = [None] * n
    for i in range(1, 2 * n):  # two rounds: the second sees the rows before each row cyclically
        k, prev = i % n, (i - 1) % n
        src[k] = prev if keys[prev] != keys[k] else src[prev]
    return [k - 1 if s is None else s for k, s in enumerate(src)]
