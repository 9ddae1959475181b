"""The reference-policy parts that objectives comparing a policy with its reference share (preference pairs, KTO):
building it through the provider (:mod:`dpolab.models.reference`), TR-DPO's updates after optimiser steps, its
moved weights in checkpoints, and the record a resumed run rebuilds it from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ...config import ModelConfig
from ...models.load import load_base_model
from ...models.reference import (
    Reference,
    ReferenceCost,
    ReferenceRequest,
    ReferenceTools,
    build_reference,
    choose_reference,
)
from ..errors import TrainError
from .base import RunContext


class WithReference:
    """Mixin for an :class:`~dpolab.engine.objectives.base.Objective` that holds ``self.reference``."""

    reference: Optional[Reference] = None

    def build_reference(
        self,
        run: RunContext,
        *,
        data: Sequence = (),
        cost: Optional[ReferenceCost] = None,
        batch_starts: Sequence[int] = (0,),
    ) -> Reference:
        """The run's reference (on the device), of the kind :func:`~dpolab.models.reference.choose_reference` picks
        for ``reference.mode``; ``data`` is what a precomputed table covers and ``cost`` the run's cost figures
        (:func:`~dpolab.models.reference.reference_cost`; None: the objective needs a live reference);
        ``batch_starts``: where in ``data`` the table's batching starts afresh (:class:`ReferenceTools`)."""
        cfg, parts = run.cfg, run.parts
        req = ReferenceRequest(
            mode=cfg.reference.mode,
            separate=cfg.reference.name_or_path,
            lora=cfg.lora.enabled,
            bf16=parts.bf16,
            sync_every=cfg.reference.sync_every,
            cost=cost,
            cache_dir=(
                Path(cfg.reference.cache_dir).expanduser() if cfg.reference.cache_dir else parts.run_dir / "ref_cache"
            ),
        )
        record = (parts.resumed or {}).get("reference")
        choice = choose_reference(
            req.mode, separate=bool(req.separate), lora=req.lora, sync_every=req.sync_every, cost=cost, record=record
        )
        if cfg.reference.sync_every and choice.kind != "copy":
            raise TrainError(
                f"reference.sync_every (TR-DPO) updates a live frozen copy of the policy, but this run's "
                f"reference is {choice.kind}; set reference.mode=copy (a precomputed table cannot "
                f"follow the policy)"
            )
        separate = ModelConfig(name_or_path=cfg.reference.name_or_path or "", dtype=cfg.model.dtype)
        tools = ReferenceTools(
            device=run.accelerator.device,
            collate=parts.collate,
            batch_size=cfg.eval.batch_size,
            autocast=run.autocast,
            load_start=lambda: load_base_model(
                cfg.model, parts.tokenizer, seed=cfg.train.seed, max_positions=parts.max_positions
            ),
            load_separate=lambda: load_base_model(separate, parts.tokenizer),
            log=run.log,
            progress=parts.progress,
            main_first=run.accelerator.main_process_first,
            batch_starts=tuple(batch_starts),
            logits=cfg.train.logits,
        )
        return build_reference(
            choice,
            req,
            run.accelerator.unwrap_model(run.model),
            list(data),
            tools,
            resuming=parts.resuming,
            record=record,
        )

    _sync_seen: Optional[int] = 0  # the step count of the last step taken (None: unknown, an older checkpoint)

    def end_step(self, model, step: int) -> None:
        """TR-DPO: the reference moves toward the policy when a multiple of ``reference.sync_every`` lies in the steps
        since the last one taken, so a sync due on a step skipped for a non-finite loss (``train.on_nonfinite=skip``)
        runs on the next step taken (once, however many were skipped) instead of never."""
        every = self.cfg.reference.sync_every
        last = self._sync_seen if self._sync_seen is not None else step - 1
        if every and step // every > last // every:
            self.reference.mix_toward(model, self.cfg.reference.mixup_alpha)
        self._sync_seen = step

    def reference_state(self) -> Dict[str, Any]:
        """The moved reference's weights (TR-DPO) and the last step taken, which a resumed run needs; nothing
        otherwise."""
        if not self.cfg.reference.sync_every:
            return {}
        return {"reference_weights": self.reference.state_dict(), "reference_sync_step": self._sync_seen}

    def load_reference_state(self, state: Dict[str, Any]) -> None:
        if "reference_weights" in state:
            self.reference.load_state_dict(state["reference_weights"])
            self._sync_seen = state.get("reference_sync_step")  # absent before it was recorded: the step before

    def record(self) -> Dict[str, Any]:
        return {"reference": self.reference.record()} if self.reference is not None else {}

    def summary(self) -> Dict[str, Any]:
        return {"reference_mode": self.reference.mode if self.reference is not None else None}
