"""benchmarks/rm_probe.py: the probe finds a direction that orders pairs when one exists, stays at chance when none
does, and a pair file without oracle scores is refused with its file, row and field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import rm_probe


def _pairs(n, dim, signal, seed):
    g = torch.Generator().manual_seed(seed)
    diff = torch.randn(n, dim, generator=g, dtype=torch.float64)
    diff[:, 0] = diff[:, 0].abs() * signal  # chosen - rejected is positive along the first feature when signal > 0
    return diff


def test_probe_orders_held_out_pairs_when_the_features_carry_the_order():
    train = _pairs(200, 16, 3.0, 0)
    held = _pairs(200, 16, 3.0, 1)
    w = rm_probe.fit_probe(train, 1.0 / len(train))
    assert ((held @ w) > 0).double().mean() > 0.9


def test_probe_stays_near_chance_without_signal():
    train = _pairs(200, 16, 0.0, 0)
    held = _pairs(400, 16, 0.0, 1)
    held[:, 0] = torch.randn(400, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = rm_probe.fit_probe(train, 1.0 / len(train))
    assert 0.35 < ((held @ w) > 0).double().mean() < 0.65


def test_pairs_without_oracle_scores_are_refused_with_file_row_and_field(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "oracle_chosen": 1.0, "oracle_rejected": 0.0})
        + "\n"
        + json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
        + "\n"
    )
    with pytest.raises(SystemExit, match=r"pairs.jsonl: row 2: no field 'oracle_chosen'"):
        rm_probe.read_pairs(str(f))


def test_an_unknown_label_kind_is_refused_before_any_model_is_loaded(monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["rm_probe.py", "probe", "no-such-model", "a.jsonl", "b.jsonl", "--label", "oracel"]
    )
    with pytest.raises(SystemExit, match="--label: unknown 'oracel'"):
        rm_probe.main()
