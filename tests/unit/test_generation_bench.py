"""benchmarks/sampling.py's own arithmetic: the same-outputs check can fail, tokens produced count EOS, HH
transcripts become chat messages, IMDb prompts alternate long and short asks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sampling as S


def test_the_same_outputs_check_fails_on_one_token_and_skips_bf16():
    outs = {"bare": [[1, 2], [3]], "dpolab": [[1, 2], [3]], "dpolab-bf16": [[1, 9], [3]]}
    assert S.check_same(outs) == {"bare": 2, "dpolab": 2, "dpolab-bf16": 1}
    with pytest.raises(SystemExit, match="dpolab matches bare on 1/2 prompts"):
        S.check_same({**outs, "dpolab": [[1, 2], [4]]})
    with pytest.raises(SystemExit, match="dpolab matches bare on 0/2"):
        S.check_same({**outs, "dpolab": [[1, 2]]})


def test_tokens_produced_count_the_eos_of_rows_that_stopped():
    assert S.produced([[1, 2, 3], [1], []], new=3) == 3 + 2 + 1


def test_hh_transcripts_and_imdb_rows_become_chat_prompts(tmp_path):
    assert S._turns("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    tsv = tmp_path / "r.tsv"
    tsv.write_text(
        "Sentiment\tText\tbatch_id\n" + "".join(f"Positive\tgood film {i}<br />yes\t{i}\n" for i in range(4))
    )
    msgs = S.prompt_messages(str(tsv), 3)
    assert len(msgs) == 3 and all(len(m) == 1 and m[0]["role"] == "user" for m in msgs)
    assert msgs[0][0]["content"].startswith("Continue") and "one word" in msgs[1][0]["content"]
    assert "<br />" not in msgs[0][0]["content"]
