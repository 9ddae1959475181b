"""What every kind of reference offers the objectives: :class:`Reference`, the interface, and its setup error."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict

from torch import Tensor

from ...errors import UserError


class ReferenceSetupError(UserError, ValueError):
    """The reference cannot be built as configured (wrong mode for the model, a resumed run's table gone astray)."""


class Reference:
    """Reference log-probs (per-sequence sums of response tokens) for a collated preference batch.

    One subclass per kind (:mod:`.live`: ``copy``, ``adapter``, ``separate``; :mod:`.table`: ``precomputed``);
    ``mode`` names the kind (``reference.mode``, ``summary.json``'s ``reference_mode``, a checkpoint's record) and
    ``model`` is the frozen model a kind holds in memory (None for the adapter-disabled policy and the table)."""

    mode: str = ""
    description: str = ""  # how the log line that reports the choice names it
    model: Any = None

    def logps(self, batch: Any, autocast: Callable = nullcontext) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) reference log-probs [B] of the batch's pairs."""
        raise NotImplementedError

    def split_logps(self, batch: Any, autocast: Callable = nullcontext) -> Dict[str, Tensor]:
        """What LD-DPO needs of the reference, as :class:`~dpolab.losses.PreferenceOutputs` fields: the sums
        (``ref_{chosen,rejected}_logps``) and a live reference's per-token log-probs (``ref_*_token_logps``, laid out
        like the policy's) or the table's shared-length sums (``ref_*_shared_logps``)."""
        raise NotImplementedError

    def check_split(self) -> None:
        """Raise when this reference cannot give :meth:`split_logps` (a table written before it stored them)."""

    def describe(self) -> str:
        """The kind in words, as the run's log names it (``live copy``, ``log-probs precomputed once``)."""
        return self.description

    def record(self) -> Dict[str, Any]:
        """What a checkpoint stores so a resumed run gets exactly this reference back."""
        return {"mode": self.mode}

    def state_dict(self) -> Dict[str, Tensor]:
        """What a checkpoint must hold of a reference that moves during training (TR-DPO's copy); nothing otherwise."""
        return {}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        if state:
            raise ReferenceSetupError(
                f"a checkpoint holds moved reference weights, but this run's reference is "
                f"'{self.mode}', which cannot move"
            )

    def mix_toward(self, policy, alpha: float) -> None:
        """TR-DPO's update of the reference toward the policy: only a live frozen copy can follow it."""
        raise ReferenceSetupError(
            f"reference.sync_every (TR-DPO) needs a live frozen copy (reference.mode=copy); "
            f"this run's reference is '{self.mode}'"
        )
