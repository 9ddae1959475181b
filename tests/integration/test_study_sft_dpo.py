"""Smoke slice of study S1 (sft-dpo): pretrain, SFT, DPO and chained runs, full and LoRA; report and plots; re-run
reuses."""

import pytest
from test_study_verdicts import assert_verdicts_match_numbers

from dpolab.data.types import DataError
from dpolab.studies.run import run_study

pytestmark = pytest.mark.slow


def test_sft_dpo_needs_its_data(tmp_path):
    with pytest.raises(DataError, match="quora-paraphrase"):
        run_study(
            "sft-dpo", smoke=True, out=str(tmp_path / "s1"), data_dir=str(tmp_path / "nowhere"), log=lambda s: None
        )


@pytest.mark.realdata
def test_sft_dpo_smoke(tmp_path, shared_data):
    out = tmp_path / "s1"
    report = run_study("sft-dpo", smoke=True, out=str(out), data_dir=str(shared_data), log=lambda s: None)
    text = report.read_text()
    for part in (
        "## paraphrase",
        "## sonnets",
        "| SFT only (2 ep) | full |",
        "| DPO only | lora-4 |",
        "| SFT 1 ep -> DPO |",
        "Claim 1",
        "Claim 2",
        "Claim 3",
        "sampled from the **base** model",
    ):
        assert part in text, part
    assert "significantly" not in text and "Mean ratio" not in text and assert_verdicts_match_numbers(text) >= 24
    assert "## Provenance" in text
    assert (
        "Learning rate over each run's steps: paraphrase SFT constant; paraphrase DPO constant; sonnets SFT constant; "
        "sonnets DPO constant."
    ) in text
    assert (out / "sft_dpo_paraphrase.png").exists() and (out / "sft_dpo_sonnets.png").exists()
    assert (out / "data" / "sonnets-pairs.jsonl").exists()
    msgs = []
    run_study("sft-dpo", smoke=True, out=str(out), data_dir=str(shared_data), log=msgs.append)
    assert sum("finished earlier, skipped" in m for m in msgs) == 22  # 20 + 2 timing runs (claim 3)
