"""One process of a run under `accelerate launch`, for tests/integration/test_multiprocess.py: trains like `dpolab
train` and writes ``rank<N>.json`` into the folder given first: the eval examples this process scored, batch by batch,
and the final eval metrics it returned.

    python -m accelerate.commands.launch --num_processes 2 tests/integration/multiprocess_worker.py OUT_DIR overrides...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dpolab.config import load_config
from dpolab.engine import Trainer


def main(out: str, overrides) -> None:
    trainer = Trainer(load_config(None, overrides))
    objective, scored = trainer.objective, []
    forward = objective.forward

    def recording(model, batch, *, training, state=None):
        if not training:  # eval batches carry their position in the eval set plus the objective's offset
            scored.append([i - objective.eval_offset for i in batch.index.tolist()])
        return forward(model, batch, training=training, state=state)

    objective.forward = recording
    summary = trainer.fit()
    rank = trainer.accelerator.process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps({"eval_batches": scored, "final_eval": summary["final_eval"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
