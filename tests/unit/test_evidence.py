"""docs/results/EVIDENCE.md from the studies' claims.json (dpolab/studies/evidence.py, claims.py)."""

import json

import pytest

from dpolab.stats import compare
from dpolab.studies.claims import SEED_CLAIMS, ClaimsError, claim_from_verdict, read_claims, write_claims
from dpolab.studies.evidence import build_evidence


def _verdict(diffs):
    a = {s: d for s, d in enumerate(diffs)}
    return compare(a, 0.0, metric="oracle reward", higher_is_better=True, label_a="MADPO (high)", label_b="DPO")


def _rows(text):
    return [line for line in text.splitlines() if line.startswith("| **")]


def test_table_from_claims_and_missing_studies(tmp_path):
    res = tmp_path / "results"
    madpo = res / "madpo-small"
    madpo.mkdir(parents=True)
    (madpo / "report.md").write_text("# S2\n")
    claims = [
        claim_from_verdict(
            "S2.madpo-vs-dpo",
            _verdict([0.10, 0.20, 0.15]),
            setting="SmolLM2-135M + LoRA r=16, 160 pairs, 7 steps, lr 2e-4",
            figure="madpo_oracle_reward.png",
            unit="oracle reward",
        )
    ]
    write_claims(madpo, "madpo", "small", claims)
    sft = res / "sft-dpo-small"
    sft.mkdir()
    write_claims(sft, "sft-dpo", "small", [claim_from_verdict("S1.lora-time", _verdict([0.01]), setting="x")])

    path = build_evidence(res, size="small")
    text = path.read_text()
    rows = _rows(text)
    assert len(rows) == len(SEED_CLAIMS)  # one row per seed claim, in SEED_CLAIMS's order
    assert [r.split("**")[1] for r in rows] == list(SEED_CLAIMS)
    row = next(r for r in rows if "S2.madpo-vs-dpo" in r)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "High: 2.23 vs 1.62 (+0.61)"
    assert cells[2].startswith("SmolLM2-135M")
    assert cells[3].startswith("+0.150 (+0.026 to +0.274) oracle reward, 3 seeds")
    assert cells[4] == "better"
    assert "[report.md](madpo-small/report.md)" in cells[5] and "madpo-small/madpo_oracle_reward.png" in cells[5]
    assert cells[6] == "![S2.madpo-vs-dpo](evidence/S2.madpo-vs-dpo.png)"
    assert (res / "evidence" / "S2.madpo-vs-dpo.png").stat().st_size > 0
    # the addendum's claim was not in madpo's file: marked, not invented
    assert "not in the report" in next(r for r in rows if "S2.madpo-oracle-margin" in r)
    # one seed: no interval, its word
    assert "(no interval)" in next(r for r in rows if "S1.lora-time" in r)
    assert "inconclusive (one seed)" in next(r for r in rows if "S1.lora-time" in r)
    # studies with no claims file: every one of their rows says so, with no number
    for r in rows:
        if "**S3." in r or "**S4." in r:
            assert "not run yet at size small" in r
    assert "Studies with no report at size small yet: dpop, squeeze" in text


def test_smoke_claims_are_marked(tmp_path):
    d = tmp_path / "squeeze-small"
    d.mkdir()
    write_claims(d, "squeeze", "small", [claim_from_verdict("S4.dpo-chosen", _verdict([-1, -2]), setting="s")], True)
    text = build_evidence(tmp_path, size="small").read_text()
    assert "(smoke run: numbers mean nothing)" in next(r for r in _rows(text) if "S4.dpo-chosen" in r)


def test_bad_claims_file_is_one_line(tmp_path):
    d = tmp_path / "dpop-small"
    d.mkdir()
    (d / "claims.json").write_text(json.dumps({"study": "dpop", "claims": [{"id": "S3.x", "ours": 1}]}))
    with pytest.raises(ClaimsError, match=r"claim 0 \(S3.x\): missing field\(s\) claim, high, low"):
        build_evidence(tmp_path)
    (d / "claims.json").write_text("{not json")
    with pytest.raises(ClaimsError, match="cannot read the claims file"):
        read_claims(d / "claims.json")


def test_cli_writes_evidence(tmp_path, capsys):
    from dpolab.cli import main

    assert main(["study", "evidence", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "EVIDENCE.md").read_text()
    assert "# Evidence: the seed claims at size small" in text
    assert text.count("not run yet at size small") == len(SEED_CLAIMS)
