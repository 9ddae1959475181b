"""Truncation is reported: per row (meta), per split at load (log) and in the run summary; eval caps are logged."""

from __future__ import annotations

import json

import pytest

from dpolab.config import DataConfig, build_config
from dpolab.data.dataset import load_preference_data, load_sft_data
from dpolab.data.formats import to_preference_row
from dpolab.data.tokenize import TRUNCATED_TOKENS, tokenize_preference
from dpolab.data.truncation_report import truncation_line, truncation_stats
from dpolab.engine.data_setup import cap_eval_data, prepare_data
from dpolab.models.tokenizer import build_char_tokenizer

TOK = build_char_tokenizer()


def _pair(prompt_len: int, chosen_len: int, rejected_len: int) -> dict:
    return {"prompt": "p" * prompt_len, "chosen": "c" * chosen_len, "rejected": "r" * rejected_len}


def test_each_cut_row_records_the_tokens_removed_per_part():
    row = to_preference_row(_pair(30, 20, 4))  # 31 prompt tokens (BOS), 21 chosen (EOS), 5 rejected
    full = tokenize_preference(row, TOK, max_length=1000)
    cut = tokenize_preference(row, TOK, max_length=24, max_prompt_length=8)
    assert TRUNCATED_TOKENS not in full.meta
    assert cut.meta[TRUNCATED_TOKENS] == {
        "prompt": len(full.prompt_ids) - len(cut.prompt_ids),
        "chosen": len(full.chosen_ids) - len(cut.chosen_ids),
    }  # rejected fits: absent
    assert cut.meta[TRUNCATED_TOKENS] == {"prompt": 31 - 8, "chosen": 21 - (24 - 8)}


def test_stats_and_line_count_prompts_and_responses_with_median_and_max():
    pairs, _ = load_preference_data(
        [_pair(30, 20, 4), _pair(50, 3, 3), _pair(2, 3, 3)], TOK, max_length=24, max_prompt_length=8, log=lambda m: None
    )
    s = truncation_stats(pairs)
    assert (s["rows"], s["prompts_cut"], s["responses"], s["responses_cut"]) == (3, 2, 6, 1)
    assert s["prompt_tokens_removed"] == {"median": (23 + 43) / 2, "max": 43, "total": 66}
    assert s["response_tokens_removed"] == {"median": 5, "max": 5, "total": 5}
    assert truncation_line(s) == (
        "truncation cut 2 of 3 prompts (tokens removed: median 33, max 43) and 1 of 6 "
        "responses (tokens removed: median 5, max 5)"
    )
    assert truncation_line(truncation_stats(pairs[2:])) == "truncation cut no prompt or response of 1 rows"


def test_the_load_log_says_what_truncation_cut():
    logs = []
    load_preference_data([_pair(30, 20, 4), _pair(2, 3, 3)], TOK, max_length=24, max_prompt_length=8, log=logs.append)
    assert logs == [
        "<memory>: 2 pairs loaded; no rows skipped; truncation cut 1 of 2 prompts (tokens removed: median 23, "
        "max 23) and 1 of 4 responses (tokens removed: median 5, max 5) (max_length 24, max_prompt_length 8)"
    ]
    logs.clear()
    load_sft_data([{"prompt": "q" * 40, "completion": "a"}], TOK, max_length=16, log=logs.append)
    assert any(
        "truncation cut 1 of 1 prompts" in m and "0 of 1 responses" in m and "max_prompt_length 8" in m for m in logs
    )


def test_prepare_data_reports_each_split_and_fills_the_stats(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(_pair(30 if i % 2 else 2, 3, 3)) + "\n" for i in range(10)))
    logs, stats = [], {}
    train, evals = prepare_data(
        DataConfig(train=str(path), max_length=24, max_prompt_length=8, eval_fraction=0.2),
        TOK,
        "preference",
        0,
        log=logs.append,
        stats=stats,
    )
    t, e = stats["truncation"]["train"], stats["truncation"]["eval"]
    assert (t["rows"], e["rows"]) == (8, 2) and t["prompts_cut"] + e["prompts_cut"] == 5
    assert t == truncation_stats(train) and e == truncation_stats(evals)
    assert any(m.startswith("train split: truncation cut") for m in logs)
    assert any(m.startswith("eval split: ") for m in logs)


def test_eval_cap_is_logged_and_off_by_default():
    assert build_config({}, []).eval.max_examples is None  # every evaluation scores the whole eval set by default
    logs = []
    assert cap_eval_data(list(range(5)), 2, logs.append) == [0, 1]
    assert logs == ["evaluation scores 2 of 5 eval examples (eval.max_examples=2; null = all)"]
    logs.clear()
    assert cap_eval_data(list(range(5)), None, logs.append) == list(range(5))
    assert logs == ["evaluation scores all 5 eval examples"]
    assert cap_eval_data(None, 3, logs.append) == []


@pytest.mark.slow
def test_run_summary_records_truncation_and_the_eval_count(tmp_path):
    from dpolab.engine import train

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(_pair(30 if i % 2 else 2, 3, 3)) + "\n" for i in range(12)))
    logs = []
    cfg = build_config(
        {},
        [
            f"data.train={path}",
            "data.max_length=24",
            "data.max_prompt_length=8",
            "data.eval_fraction=0.25",
            "eval.max_examples=2",
            "train.max_steps=1",
            "train.batch_size=2",
            "eval.at_start=false",
            "output.progress=false",
            "output.save_final=false",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    summary = train(cfg, log=logs.append)
    assert summary["data"]["truncation"]["train"]["rows"] == 9 and summary["data"]["truncation"]["eval"]["rows"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"] == json.loads(
        json.dumps(summary["data"])
    )
    assert "evaluation scores 2 of 3 eval examples (eval.max_examples=2; null = all)" in logs
