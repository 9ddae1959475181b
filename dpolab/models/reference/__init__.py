"""The reference policy pi_ref: one class per kind behind one small interface (:class:`Reference`), one function
that chooses the kind (:func:`choose_reference`), one factory that builds it (:func:`build_reference`).

Kinds that give the same log-probs:

- ``copy`` (:class:`LiveCopy`): a frozen copy of the starting policy (full fine-tuning); TR-DPO moves it;
- ``adapter`` (:class:`AdapterOff`): the policy with its LoRA adapters disabled (no second copy in memory);
- ``separate`` (:class:`SeparateModel`): another model (``reference.name_or_path``);
- ``precomputed`` (:class:`PrecomputedTable`): log-probs scored once before training by one of the kinds above and
  cached on disk under a key (:func:`table_key`) of the source's weights (their raw bytes), dtype, autocast,
  attention implementation, the token ids and the table's columns (``TABLE_COLUMNS``), then looked up by example
  index (no reference model stays in memory).

Every kind gives :meth:`Reference.logps` (the sums), :meth:`Reference.split_logps` (what LD-DPO needs: a live
kind's per-token log-probs, the table's shared-length sums), :meth:`Reference.record` (what a checkpoint stores so
a resumed run gets exactly the same reference back), :meth:`Reference.state_dict` (a moved copy's weights) and
:meth:`Reference.describe`. :func:`build_reference` is called after the policy has been placed on its device
(``accelerator.prepare``) and places every model it holds, and every batch it scores, on that ``device``.
"""

from .base import Reference, ReferenceSetupError
from .build import ReferenceRequest, ReferenceTools, build_reference
from .choice import KINDS, Choice, ReferenceCost, choose_reference, reference_cost
from .key import CACHE_FORMAT, FULL_HASH_BYTES, TABLE_COLUMNS, data_fingerprint, table_key, weights_fingerprint
from .live import AdapterOff, LiveCopy, LiveReference, SeparateModel
from .table import PrecomputedTable, table_batches

__all__ = [
    "AdapterOff",
    "CACHE_FORMAT",
    "Choice",
    "FULL_HASH_BYTES",
    "KINDS",
    "LiveCopy",
    "LiveReference",
    "PrecomputedTable",
    "Reference",
    "ReferenceCost",
    "ReferenceRequest",
    "ReferenceSetupError",
    "ReferenceTools",
    "SeparateModel",
    "TABLE_COLUMNS",
    "build_reference",
    "choose_reference",
    "data_fingerprint",
    "reference_cost",
    "table_batches",
    "table_key",
    "weights_fingerprint",
]
