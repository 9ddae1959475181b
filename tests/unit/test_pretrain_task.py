"""Pretraining windows of a plain text file and the pretrain-text task branch."""

import pytest

from dpolab.config import DataConfig
from dpolab.data.types import DataError
from dpolab.engine.data_setup import task_rows
from dpolab.tasks import pretrain_text as T


def test_windows_start_at_lines_and_cover_the_text():
    text = (
        "First Citizen:\r\nBefore we proceed any further, hear me speak.\r\n\r\nAll:\r\nSpeak, speak.\r\n" * 5
        + "x" * 50
        + "\n"
    )
    w = T.text_windows(text, 40)
    assert all(len(x) <= 40 for x in w)
    assert "".join(w).replace("\n", "") == text.replace("\r\n", "").replace("\n", "")  # nothing lost, nothing repeated
    assert w[0] == "First Citizen:"  # the next line would overflow 40 characters
    with pytest.raises(ValueError):
        T.text_windows(text, 0)


def test_pretrain_rows_and_task_branch(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text("".join(f"Line number {i} of the play.\n" for i in range(200)), encoding="utf-8")
    tr, ev = T.pretrain_rows(p, chunk_chars=100, n_eval=5)
    assert len(ev) == 5 and ev[-1]["text"].endswith("Line number 199 of the play.")
    assert not {r["text"] for r in tr} & {r["text"] for r in ev}
    tr2, ev2 = task_rows(
        DataConfig(task="pretrain-text", task_args={"path": str(p), "chunk_chars": 100, "n_train": 7, "n_eval": 5}),
        "sft",
        0,
    )
    assert len(tr2) == 7 and ev2 == ev and set(tr2[0]) == {"text", "id"}
    with pytest.raises(DataError, match="train.mode=sft"):
        task_rows(DataConfig(task="pretrain-text", task_args={"path": str(p)}), "preference", 0)
    with pytest.raises(DataError, match="file not found"):
        T.pretrain_rows(tmp_path / "none.txt")
    with pytest.raises(DataError, match="not more than n_eval"):
        T.pretrain_rows(p, chunk_chars=100, n_eval=10_000)
