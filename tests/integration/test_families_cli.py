"""Through the CLI, on every model family dpolab claims: `dpolab train` with the default (fast) layout gives the plain
path's step-1 log-probs and loss within 1e-4 (fp32), on sequences longer than the families' 16-token windows."""

from __future__ import annotations

import warnings

import pytest

from dpolab.cli import main
from dpolab.engine.logging import read_metrics
from dpolab.models.load import TINY_PRESETS

pytestmark = pytest.mark.slow

ARGS = [
    "data.task=arithmetic",
    "data.task_args={n_train: 8, n_eval: 4, n_terms: [3, 4], max_value: 50}",
    "data.max_length=64",
    "train.batch_size=4",
    "train.max_steps=1",
    "train.lr=1e-3",
    "eval.at_start=false",
    "output.progress=false",
    "output.save_final=false",
    "reference.mode=copy",
]


def _step1(tmp_path, preset, name, *extra):
    run = tmp_path / name
    assert main(["train", f"model.name_or_path={preset}", *ARGS, f"output.dir={run}", *extra]) == 0
    return next(r for r in read_metrics(run) if "grad_norm" in r)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_default_layout_equals_plain_through_the_cli(tmp_path, preset):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast = _step1(tmp_path, preset, "fast")
    fallbacks = [str(w.message) for w in seen if "fast path" in str(w.message)]
    assert not fallbacks, fallbacks  # the default layout really ran (no silent step down to the plain path)
    plain = _step1(tmp_path, preset, "plain", "train.layout=padded", "train.logits=full")
    for key in ("logps/chosen", "logps/rejected", "loss"):
        assert fast[key] == pytest.approx(plain[key], abs=1e-4), (preset, key, fast[key], plain[key])
    assert fast["tokens_per_s"] > 0
