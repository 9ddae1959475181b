"""The reference-policy parts that objectives comparing a policy with its reference share (preference pairs, KTO):
building it through the provider (:mod:`dpolab.models.reference`), TR-DPO's updates after optimiser steps, its
moved weights in checkpoints, and the record a resumed run rebuilds it from."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ...config import ModelConfig
from ...models.load import load_base_model
from ...models.reference import Reference, ReferenceRequest, ReferenceTools, build_reference
from ..errors import TrainError
from .base import RunContext


class WithReference:
    """Mixin for an :class:`~dpolab.engine.objectives.base.Objective` that holds ``self.reference``."""

    reference: Optional[Reference] = None

    def build_reference(self, run: RunContext, *, mode: str, data: Sequence = (), live_examples: int = 0,
                        batch_starts: Sequence[int] = (0,)) -> Reference:
        """The run's reference (on the device), in ``mode`` (``reference.mode``, or one the objective forces);
        ``data`` is what a precomputed table covers and ``live_examples`` how many examples a live one would score;
        ``batch_starts``: where in ``data`` the table's batching starts afresh (:class:`ReferenceTools`)."""
        cfg = run.cfg
        if mode == "auto" and cfg.reference.sync_every and not cfg.reference.name_or_path:
            mode = "copy"  # TR-DPO moves a frozen copy toward the policy: neither a table nor the adapter can follow
            run.log("reference: live copy (reference.mode=auto with reference.sync_every: TR-DPO moves a frozen copy "
                    "of the policy toward it)")
        req = ReferenceRequest(
            mode=mode, separate=cfg.reference.name_or_path, lora=cfg.lora.enabled, live_examples=live_examples,
            once_examples=len(data), bf16=run.bf16,
            cache_dir=Path(cfg.reference.cache_dir).expanduser() if cfg.reference.cache_dir else run.run_dir / "ref_cache")
        separate = ModelConfig(name_or_path=cfg.reference.name_or_path or "", dtype=cfg.model.dtype)
        tools = ReferenceTools(
            device=run.accelerator.device, collate=run.collate, batch_size=cfg.eval.batch_size, autocast=run.autocast,
            load_start=lambda: load_base_model(cfg.model, run.tokenizer, seed=cfg.train.seed, max_positions=run.max_positions),
            load_separate=lambda: load_base_model(separate, run.tokenizer),
            log=run.log, progress=run.progress, main_first=run.accelerator.main_process_first,
            batch_starts=tuple(batch_starts))
        reference = build_reference(req, run.accelerator.unwrap_model(run.model), list(data), tools,
                                    resuming=run.resuming, record=(run.resumed or {}).get("reference"))
        if cfg.reference.sync_every and reference.mode != "copy":
            raise TrainError(f"reference.sync_every (TR-DPO) updates a live frozen copy of the policy, but this run's "
                             f"reference is {reference.mode}; set reference.mode=copy (a precomputed table cannot "
                             f"follow the policy)")
        return reference

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
        weights = {k: v.detach().cpu().clone() for k, v in self.reference.model.state_dict().items()}
        return {"reference_weights": weights, "reference_sync_step": self._sync_seen}

    def load_reference_state(self, state: Dict[str, Any]) -> None:
        if "reference_weights" in state:
            self.reference.model.load_state_dict(state["reference_weights"])
            self._sync_seen = state.get("reference_sync_step")  # absent before it was recorded: the step before

    def record(self) -> Dict[str, Any]:
        return {"reference": self.reference.record()} if self.reference is not None else {}

    def summary(self) -> Dict[str, Any]:
        return {"reference_mode": self.reference.mode if self.reference is not None else None}
