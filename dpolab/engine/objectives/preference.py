"""Preference optimisation on pairs: the configured loss list (DPO family), a reference policy, probes."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ... import atomic
from ...data.batches import PairBatch
from ...data.collate import collate_preference_fast
from ...losses import LOCAL, CompositeLoss, DistContext, PreferenceOutputs
from ...models.preference_logps import generic_metrics, preference_outputs
from ...models.reference import Reference, reference_cost
from ..errors import TrainError
from .base import MicroResult, Objective, RunContext, accuracy_postfix
from .with_reference import WithReference


def preference_step(
    policy,
    reference: Optional[Reference],
    loss: CompositeLoss,
    batch: PairBatch,
    autocast,
    dist: DistContext = LOCAL,
    logits: Optional[str] = None,
    on_outputs: Optional[Callable[[PreferenceOutputs], Any]] = None,
):
    """Objective (mean over the batch's pairs) and metrics of one preference batch (``logits``: ``train.logits``;
    ``on_outputs``: called with the batch's log-probs, e.g. for an objective's own statistics)."""
    out = preference_outputs(
        policy,
        reference,
        batch,
        need_tokens=loss.needs_token_logps,
        extras=loss.needs_extras,
        autocast=autocast,
        need_sq=loss.needs_token_log_sum_sq_probs,
        need_ref_split=loss.needs_ref_token_split,
        logits=logits,
    )
    if on_outputs is not None:
        on_outputs(out)
    objective, metrics, parts = loss(out, dist=dist)
    metrics.update(generic_metrics(out))
    for p in parts:  # the first component with implicit rewards gives rewards/chosen and rewards/rejected
        if p.chosen_rewards is not None:
            metrics["rewards/chosen"] = p.chosen_rewards.mean()
            metrics["rewards/rejected"] = p.rejected_rewards.mean()
            break
    return objective, metrics


class PreferenceObjective(WithReference, Objective):
    name = "preference"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss = CompositeLoss(cfg.loss)  # WPO's log sum p^2 and LD-DPO's reference split: preference_step
        self.reference: Optional[Reference] = None
        self.probes = self.probe_baseline = None
        self.dist = LOCAL
        self._gather = lambda t: t
        self._eval_data: Optional[Sequence] = None
        self._eval_state: Optional[Dict[str, Any]] = None  # a stateful loss's state while an evaluation runs
        self._tokenizer = None

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> PairBatch:
        return collate_preference_fast(items, pad_id, layout, hidden_size=hidden_size)

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, run: RunContext) -> None:
        super().setup(run)
        acc = run.accelerator
        if acc.num_processes > 1:  # batch-level losses take their statistics over every process's pairs
            self.dist = DistContext(all_gather=acc.gather, rank=acc.process_index, world_size=acc.num_processes)
            self._gather = acc.gather
        self._tokenizer = run.parts.tokenizer
        self.reference = self._build_reference(run)
        if self.reference is not None and self.loss.needs_ref_token_split:
            self.reference.check_split()  # a resumed run's older table may lack LD-DPO's shared-length sums
        self._eval_data, self.eval_offset = run.eval_data, len(run.train_data)
        if run.cfg.eval.probes:
            self.probes, self.probe_baseline = self._build_probes(run)

    def _build_reference(self, run: RunContext) -> Optional[Reference]:
        cfg = self.cfg
        if not self.loss.needs_reference:
            if cfg.reference.sync_every:
                raise TrainError("reference.sync_every (TR-DPO) updates a reference, but this loss list needs none")
            return None
        if cfg.reference.mode == "none":
            raise TrainError("reference.mode is 'none' but the loss needs a reference model")
        per_step = cfg.train.batch_size * cfg.train.grad_accum * run.accelerator.num_processes
        cost = reference_cost(
            steps=run.parts.total_steps,
            examples_per_step=per_step,
            eval_every=cfg.eval.every,
            eval_at_start=cfg.eval.at_start,
            n_train=len(run.train_data),
            n_eval=len(run.eval_data),
        )
        return self.build_reference(
            run, data=list(run.train_data) + list(run.eval_data), cost=cost, batch_starts=(0, len(run.train_data))
        )  # held-out pairs in eval's own batches

    def _build_probes(self, run: RunContext):
        """The probe set and its scores under the starting policy, saved so a resumed run reuses both."""
        from ...diagnostics.probes import build_probe_set, score_probes

        parts = run.parts
        path = parts.run_dir / "probes.pt"
        if parts.resuming and path.exists():
            saved = torch.load(path, weights_only=False)
            return saved["probes"], saved["baseline"]
        if parts.resuming:
            raise TrainError(f"resuming a run with eval.probes needs {path}, which is gone")
        cfg = self.cfg
        model = run.accelerator.unwrap_model(run.model)
        probes = build_probe_set(
            run.eval_data or run.train_data,
            parts.tokenizer,
            n=cfg.eval.probe_examples,
            seed=cfg.train.seed,
            model=model,
            greedy_tokens=cfg.eval.probe_greedy_tokens,
            batch_size=cfg.eval.batch_size,
            edges=cfg.eval.edit_buckets,
        )
        baseline = score_probes(
            model, probes, parts.tokenizer.pad_token_id, batch_size=cfg.eval.batch_size, autocast=self.autocast
        )
        if run.is_main:
            atomic.torch_save({"probes": probes, "baseline": baseline}, path)
        return probes, baseline

    # -- a micro-batch --------------------------------------------------------------------------------------------
    def begin_step(self, model, batches: List[PairBatch], step: int) -> List[DistContext]:
        """Each micro-batch's :class:`DistContext`. A batch-level loss (beta-DPO, AOT) takes its statistics over the
        whole optimiser step: when the step has several micro-batches or processes, a no-grad pass over them first
        gives those statistics their inputs."""
        world = self.dist.world_size
        if not self.loss.batch_level:
            return [self.dist] * len(batches)
        if len(batches) == 1 and world == 1:
            return [replace(self.dist, step=step)]
        with torch.no_grad():
            parts = [
                preference_outputs(
                    model,
                    self.reference,
                    b,
                    need_tokens=False,
                    extras=self.loss.needs_extras,
                    autocast=self.autocast,
                    logits=self.cfg.train.logits,
                )
                for b in batches
            ]
        # the step's order: micro-batch by micro-batch, each one's processes in rank order (dpolab/engine/batching.py)
        gathered = [_gather_outputs(p, self._gather) for p in parts]
        step_outputs = _concat_outputs(gathered)
        contexts, start = [], 0
        for b, g in zip(batches, gathered):
            contexts.append(
                replace(self.dist, step_outputs=step_outputs, offset=start + self.dist.rank * b.num_pairs, step=step)
            )
            start += g.batch_size
        return contexts

    def forward(self, model, batch: PairBatch, *, training: bool, state: Optional[DistContext] = None) -> MicroResult:
        # an eval batch is scored on its own (no gathers: each process scores its share of the batches), from the
        # state a stateful loss (beta-DPO) had when the evaluation began: whatever batches came before it, or where
        if not training and self._eval_state is not None:
            self.loss.load_state_dict(self._eval_state)
        dist = (state or self.dist) if training else LOCAL  # no state: a batch scored on its own, outside the loop
        objective, metrics = preference_step(
            model, self.reference, self.loss, batch, self.autocast, dist=dist, logits=self.cfg.train.logits
        )
        n = batch.num_pairs
        return MicroResult(objective * n, float(n), metrics)

    postfix = staticmethod(accuracy_postfix)

    # -- evaluation -----------------------------------------------------------------------------------------------
    @contextmanager
    def evaluation(self, eval_data: Sequence) -> Iterator[None]:
        if self.reference is not None and self.reference.mode == "precomputed" and eval_data is not self._eval_data:
            raise TrainError(
                "eval_data was replaced after the reference log-probs were precomputed; pass it to "
                "Trainer(..., eval_data=...) or set reference.mode=copy (or adapter under LoRA)"
            )
        state = self._eval_state = self.loss.state_dict()
        try:
            yield
        finally:
            self.loss.load_state_dict(state)  # evaluation must not move beta-DPO's statistics
            self._eval_state = None

    def eval_extras(self, model) -> Dict[str, Any]:
        if self.probes is None:
            return {}
        from ...diagnostics.probes import probe_metrics, score_probes

        scores = score_probes(
            model,
            self.probes,
            self._tokenizer.pad_token_id,
            batch_size=self.cfg.eval.batch_size,
            autocast=self.autocast,
        )
        return probe_metrics(scores, self.probe_baseline, self.probes.buckets)

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"loss": self.loss.state_dict(), **self.reference_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"] if "loss" in state else state)  # checkpoints before TR-DPO: the loss's
        self.load_reference_state(state)


def _gather_outputs(out: PreferenceOutputs, gather) -> PreferenceOutputs:
    """Every process's per-pair values of one micro-batch, concatenated in rank order (detached)."""
    fields = {k: gather(v.detach()) for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
    return PreferenceOutputs(**fields, extras={k: gather(v.detach()) for k, v in out.extras.items()})


def _concat_outputs(parts: List[PreferenceOutputs]) -> PreferenceOutputs:
    fields = {
        k: torch.cat([getattr(p, k) for p in parts]) for k, v in vars(parts[0]).items() if isinstance(v, torch.Tensor)
    }
    return PreferenceOutputs(**fields, extras={k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras})
