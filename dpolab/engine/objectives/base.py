"""What the training loop asks of an objective (SFT, preference pairs, reward model, ...).

The loop (:mod:`dpolab.engine.trainer`) never names an objective: it asks the one ``train.mode`` names for its
data kind, model, typed batches (:mod:`dpolab.data.batches`), the loss of a micro-batch and its statistics, what
evaluation adds, what the progress bar shows, what is checkpointed and what the final save is. A new objective is
a new file with a subclass of :class:`Objective` plus one registration line in :mod:`dpolab.engine.objectives`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from torch import Tensor

from ...config import RunConfig
from ...data.batches import Batch
from ...progress import progress_bar
from ..data_kinds import PREFERENCE_PAIRS, DataKind


@dataclass
class RunParts:
    """What only objectives that build parts of their own use (a reference, probes, KTO's mismatched pairs).

    ``collate(indices, data)`` gives the objective's batch of ``data[i]`` on the device, with ``index`` = position in
    ``data``; ``resuming`` says the model already holds a checkpoint's weights, and ``resumed`` is the objective's
    :meth:`Objective.record` from that checkpoint (None for a fresh run or a checkpoint without one)."""

    tokenizer: Any
    collate: Callable[..., Batch]
    run_dir: Path
    total_steps: int
    max_positions: int
    bf16: bool = False  # bf16 autocast is on (train.bf16, with auto resolved for this hardware)
    progress: Callable = partial(progress_bar, enabled=False)  # the run's bars: progress(iterable or None, **tqdm)
    resuming: bool = False
    resumed: Optional[Dict[str, Any]] = None


@dataclass
class RunContext:
    """What every objective may use once the model is placed on its device (``accelerator.prepare``); ``parts``:
    what only some use (:class:`RunParts`)."""

    cfg: RunConfig
    accelerator: Any
    model: Any  # as prepared (may be wrapped for DDP)
    train_data: Sequence
    eval_data: Sequence
    parts: RunParts
    autocast: Callable = nullcontext
    log: Callable[[str], None] = print
    is_main: bool = True


@dataclass
class MicroResult:
    """A micro-batch's contribution: ``objective`` is a sum over its ``weight`` units (pairs or tokens), so that
    scaling by 1 / (units of the whole step) makes accumulation equal one big batch; ``metrics`` are its means."""

    objective: Tensor
    weight: float
    metrics: Dict[str, Any] = field(default_factory=dict)


class Objective:
    """Base class: override what differs. ``data_kind`` is what the data pipeline loads and how
    (:class:`~dpolab.engine.data_kinds.DataKind`; default: preference pairs)."""

    name: str = ""
    data_kind: DataKind = PREFERENCE_PAIRS
    fixed_layout: Optional[str] = None  # a batch layout this objective always uses (else train.layout)
    autocast: Callable = nullcontext  # the run's mixed-precision context, set by setup()

    @classmethod
    def driver(cls, cfg: RunConfig) -> Optional[Callable[..., Dict[str, Any]]]:
        """A function ``driver(cfg, **trainer_kwargs) -> summary`` that runs this objective's training as several
        trainer phases (``dpolab.engine.train`` calls it instead of one :class:`~dpolab.engine.Trainer`); None (the
        default): one trainer run."""
        return None

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not cfg.lora.enabled:
            from ...config import ConfigError

            raise ConfigError(
                "model.load_in_4bit / load_in_8bit: quantised weights cannot be trained; set "
                "lora.enabled=true (QLoRA trains adapters on the quantised base)"
            )

    # -- data ---------------------------------------------------------------------------------------------------
    def length(self, example) -> int:
        """Tokens of the longest sequence the example makes (for position budgets and length grouping)."""
        return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))

    def units(self, example) -> int:
        """What a step averages over, per example (1 per pair; completion tokens for SFT)."""
        return 1

    def collate(self, items: List[Any], pad_id: int, layout: str, hidden_size: Optional[int]) -> Batch:
        """The typed batch of ``items`` (e.g. :func:`dpolab.data.collate.collate_preference_fast`)."""
        raise NotImplementedError

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, tokenizer, *, seed: int, max_positions: int):
        """The trainable model: :meth:`load_model`, with the run's model-wide settings (gradient checkpointing,
        torch.compile)."""
        model = self.load_model(tokenizer, seed=seed, max_positions=max_positions)
        if self.cfg.train.gradient_checkpointing:
            from ...models.load import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
        if self.cfg.train.compile:
            from ..runtime import compile_mode, compile_model

            compile_model(model, compile_mode(self.cfg.train.compile))
        return model

    def load_model(self, tokenizer, *, seed: int, max_positions: int):
        from ...models.load import load_policy

        return load_policy(self.cfg.model, self.cfg.lora, tokenizer, seed=seed, max_positions=max_positions)

    def setup(self, run: RunContext) -> None:
        """Called once the model is on its device (build a reference, probes...); overrides call it first."""
        self.autocast = run.autocast

    def model_to_save(self, model):
        return model

    # -- a micro-batch ------------------------------------------------------------------------------------------
    def begin_step(self, model, batches: List[Batch], step: int) -> List[Any]:
        """Called with this process's micro-batches of an optimiser step before their forwards (a batch-level loss
        takes its statistics over all of them first). Returns one state per micro-batch, which the loop passes back
        to :meth:`forward` with that micro-batch (``state=``); None where there is nothing to pass."""
        return [None] * len(batches)

    def forward(self, model, batch: Batch, *, training: bool, state: Any = None) -> MicroResult:
        """The micro-batch's :class:`MicroResult`; ``state`` is what :meth:`begin_step` returned for it (None for an
        evaluation batch or a batch scored on its own)."""
        raise NotImplementedError

    def end_step(self, model, step: int) -> None:
        """Called after each optimiser step that was taken, with the step count (e.g. a reference update)."""

    def set_statistics(self, rows: List[Dict[str, Any]]) -> Dict[str, float]:
        """Exact statistics over all rows of a step or an evaluation (beyond weighted means of the rows)."""
        return {}

    # -- evaluation ---------------------------------------------------------------------------------------------
    eval_offset: int = 0  # added to eval batches' ``index`` (a precomputed table holds train then eval examples)

    @contextmanager
    def evaluation(self, eval_data: Sequence) -> Iterator[None]:
        """Around an evaluation pass over ``eval_data`` (e.g. keep a stateful loss's statistics unchanged)."""
        yield

    def eval_extras(self, model) -> Dict[str, Any]:
        """Metrics evaluation adds beyond the eval set's objective (e.g. probes)."""
        return {}

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and numbers a checkpoint keeps (a stateful loss's statistics)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def record(self) -> Dict[str, Any]:
        """A JSON description a checkpoint keeps so that a resumed run rebuilds the same parts (the reference)."""
        return {}

    def summary(self) -> Dict[str, Any]:
        """What ``summary.json`` records of the objective (``reference_mode``: None for one without a reference)."""
        return {"reference_mode": None}

    # -- progress -----------------------------------------------------------------------------------------------
    def postfix(self, row: Dict[str, Any]) -> Dict[str, str]:
        """What the progress bar shows of a logged training row."""
        return {"loss": f"{row['loss']:.4f}"}


def accuracy_postfix(row: Dict[str, Any]) -> Dict[str, str]:
    """The loss and the reward accuracy, for objectives that score pairs."""
    return {"loss": f"{row['loss']:.4f}", "acc": f"{row['reward_accuracy']:.2f}"}
