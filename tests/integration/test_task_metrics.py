"""Task metrics of study S1 on tiny models: paraphrase label metrics (and an SFT run on an all-'yes' set that
makes the model prefer 'yes'), sonnet chrF / held-out NLL / sampled rejected responses, and pretraining on
text windows through the engine."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpolab.config import build_config
from dpolab.engine import train
from dpolab.models.load import load_saved_model, tiny_config
from dpolab.models.tokenizer import build_char_tokenizer
from dpolab.tasks import paraphrase as P
from dpolab.tasks import sonnets as S

pytestmark = pytest.mark.slow
CHAR = build_char_tokenizer()
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
LABELS, PREFIX = P.resolve_labels(CHAR)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("tiny-gpt2", CHAR, TINY, max_positions=512)).eval()


def toy_pairs(n, label=None):
    return [
        P.QuestionPair(f"i{i}", str(i), f"Is {i} odd?", f"Is {i + 1} even?", (i % 2) if label is None else label)
        for i in range(n)
    ]


def write_tsv(path, pairs):
    path.write_text(
        "\tid\tsentence1\tsentence2\tis_duplicate\n"
        + "".join(f"{p.qid}\t{p.id}\t{p.sentence1}\t{p.sentence2}\t{float(p.label)}\n" for p in pairs),
        encoding="utf-8",
    )
    return str(path)


def test_label_metrics_on_an_untrained_model():
    model = tiny_model()
    rows = P.sft_rows(toy_pairs(10), labels=LABELS, answer_prefix=PREFIX)
    m = P.label_metrics(model, CHAR, rows, labels=LABELS, batch_size=4)
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0 and m["n"] == 10
    lp = P.label_logps(model, CHAR, [r["prompt"] for r in rows], labels=LABELS, batch_size=3)
    # the metrics are those of the prediction "the label token with the higher log-prob"
    pred, gold = (lp[:, 0] > lp[:, 1]).float(), torch.tensor([float(r["label"]) for r in rows])
    assert m["p_yes"] == pytest.approx(float(pred.mean())) and m["accuracy"] == pytest.approx(
        float((pred == gold).float().mean())
    )
    assert m["label_margin"] == pytest.approx(float(((lp[:, 0] - lp[:, 1]) * (2 * gold - 1)).mean()), abs=1e-5)
    lp1 = P.label_logps(model, CHAR, [r["prompt"] for r in rows], labels=LABELS, batch_size=10)
    assert lp.shape == (10, 2) and torch.allclose(lp, lp1, atol=1e-5)  # batching (padding) does not change the scores
    # the score at the answer position equals the first-token log-prob the training pipeline would use
    ids = P._prompt_ids(CHAR, rows[0]["prompt"], 512)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    y, n = P.label_token_ids(CHAR, LABELS)
    assert torch.allclose(lp[0], full[[y, n]], atol=1e-5)
    hook = P.label_metrics_hook(rows, labels=LABELS, limit=4)
    assert hook(model, CHAR, 0)["n"] == 4


@pytest.mark.parametrize(
    "preset,dtype",
    [(p, torch.float32) for p in ("tiny-gpt2", "tiny-mistral", "tiny-qwen2-sw", "tiny-gemma2", "tiny-phi3")]
    + [(p, torch.bfloat16) for p in ("tiny-mistral", "tiny-gemma2")],
)
def test_label_logps_equal_a_full_forward_per_prompt_on_windowed_and_capped_families(preset, dtype):
    """The label scores come from the models' fast path (the head at the answer position only); they equal the
    full logits' log_softmax at each unpadded prompt's last token, on prompts (60-80 characters) longer than the
    presets' 16-token windows, with Gemma-2's soft-capping, in fp32 and with bf16 weights, and the fast path is in
    use (not a fallback)."""
    from dpolab.models.fastpath import fast_path_report
    from dpolab.models.load import disable_dropout

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config(preset, CHAR, {"final_logit_softcapping": 2.0} if "gemma" in preset else {})
    )
    disable_dropout(model)
    for p in model.parameters():  # log-probs spread over nats, so windows and the cap matter
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    model.to(dtype).eval()
    rows = P.sft_rows(toy_pairs(6), labels=LABELS, answer_prefix=PREFIX)
    prompts = [
        r["prompt"] + " and more" * i for i, r in enumerate(rows)
    ]  # different lengths: padding in the plain batch
    lp = P.label_logps(model, CHAR, prompts, labels=LABELS, batch_size=4, max_prompt_length=70)  # 70: some are cut
    y, n = P.label_token_ids(CHAR, LABELS)
    with torch.no_grad():
        want = torch.stack(
            [
                model(input_ids=torch.tensor([P._prompt_ids(CHAR, p, 70)]))
                .logits[0, -1]
                .float()
                .log_softmax(-1)[[y, n]]
                for p in prompts
            ]
        )
    assert max(len(P._prompt_ids(CHAR, p, 70)) for p in prompts) == 70 > 16
    # fp32: the same numbers; bf16 weights: within bf16 rounding of the logits (a wrong window or cap is off by far
    # more)
    assert torch.allclose(lp, want, atol=1e-5 if dtype == torch.float32 else 3e-2), (lp - want).abs().max()
    assert (lp[:, 0] - lp[:, 1]).abs().max() > 1e-3  # the scores are not degenerate
    report = fast_path_report(model)
    assert report.get(("prefix", "response"), "not probed") is None, report


def test_sft_on_all_yes_makes_the_model_prefer_yes(tmp_path):
    path = write_tsv(tmp_path / "quora.csv", toy_pairs(48, label=1))
    eval_rows = P.sft_rows(toy_pairs(8, label=1), labels=LABELS, answer_prefix=PREFIX)
    model = tiny_model()
    before = P.label_metrics(model, CHAR, eval_rows, labels=LABELS)
    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": TINY},
            "data": {
                "task": "paraphrase",
                "task_args": {"path": path, "dev": 8, "test": 0, "seed": 0},
                "max_length": 128,
            },
            "train": {"mode": "sft", "batch_size": 8, "max_steps": 15, "lr": 3e-3, "schedule": "constant", "seed": 0},
            "eval": {"every": 0, "batch_size": 8},
            "output": {"dir": str(tmp_path / "run"), "progress": False},
        },
        [],
    )
    s = train(cfg, eval_hooks=[P.label_metrics_hook(eval_rows, labels=LABELS)], log=lambda m: None)
    assert s["final_eval"]["eval/p_yes"] == 1.0 and s["final_eval"]["eval/accuracy"] == 1.0
    trained = load_saved_model(tmp_path / "run" / "final", CHAR)
    after = P.label_metrics(trained, CHAR, eval_rows, labels=LABELS)
    assert after["accuracy"] == 1.0 and after["label_margin"] > before["label_margin"] + 1.0
    # an all-'yes' model on a balanced set: accuracy 1/2, macro-F1 (2/3 + 0) / 2
    mixed = P.sft_rows(toy_pairs(8), labels=LABELS, answer_prefix=PREFIX)
    m = P.label_metrics(trained, CHAR, mixed, labels=LABELS)
    assert m["accuracy"] == 0.5 and m["macro_f1"] == pytest.approx(1 / 3)


SONNET_ROWS = [
    {
        "prompt": f"Shall I compare thee {i}\nto a summer's day\nthou art more lovely\n",
        "completion": f"and more temperate {i}\nrough winds do shake\nthe darling buds of May",
        "n_lines": 3,
        "number": i,
        "id": f"sonnet-{i}",
    }
    for i in range(4)
]


def test_sonnet_metrics_run_on_a_tiny_model():
    model = tiny_model()
    rows = [dict(r, reference=r["completion"]) for r in SONNET_ROWS]
    c = S.chrf_metrics(model, CHAR, rows, seed=0, max_new_tokens=40, return_samples=True)
    assert 0.0 <= c["chrf"] <= 100.0 and 0.0 <= c["chrf_sentence_mean"] <= 100.0 and len(c["samples"]) == 4
    assert all(s.count("\n") <= 2 for s in c["samples"])  # cut to the reference's 3 lines
    assert S.chrf_metrics(model, CHAR, rows, seed=0, max_new_tokens=40)["chrf"] == c["chrf"]  # seeded
    nll = S.continuation_nll(model, CHAR, rows, batch_size=3)
    n_chars = sum(len(r["completion"]) for r in rows)
    assert nll["nll_tokens"] == n_chars  # one token per character, EOS not counted
    assert nll["nll_per_token"] > 0 and abs(nll["nll_per_token"] - math.log(len(CHAR))) < 1.5  # near uniform
    assert nll["ppl"] == pytest.approx(math.exp(nll["nll_per_token"]))
    assert S.continuation_nll(model, CHAR, rows, batch_size=4)["nll_per_token"] == pytest.approx(
        nll["nll_per_token"], rel=1e-5
    )
    pairs = S.sampled_rejected_rows(model, CHAR, rows, seed=1, max_new_tokens=40, log=lambda m: None)
    assert len(pairs) == 4 and all(
        p["rejected_kind"] == "sampled" and p["chosen"] == r["completion"] for p, r in zip(pairs, rows)
    )
    assert pairs == S.sampled_rejected_rows(model, CHAR, rows, seed=1, max_new_tokens=40, log=lambda m: None)
    both = S.sonnet_metrics_hook(rows, max_new_tokens=20)(model, CHAR, 0)
    assert {"chrf", "chrf_sentence_mean", "nll_per_token", "nll_per_char"} <= set(both)


def test_pretrain_text_trains_through_the_engine(tmp_path):
    text = tmp_path / "input.txt"
    text.write_text(
        "".join(f"ROMEO:\nBut soft, what light through yonder window breaks {i}?\n\n" for i in range(60)),
        encoding="utf-8",
    )
    cfg = build_config(
        {
            "model": {"name_or_path": "tiny-gpt2", "tiny": TINY},
            "data": {
                "task": "pretrain-text",
                "task_args": {"path": str(text), "chunk_chars": 120, "n_eval": 4},
                "max_length": 128,
            },
            "train": {"mode": "sft", "batch_size": 8, "max_steps": 20, "lr": 3e-3, "schedule": "constant", "seed": 0},
            "eval": {"every": 0, "batch_size": 4},
            "output": {"dir": str(tmp_path / "pre"), "progress": False},
        },
        [],
    )
    s = train(cfg, log=lambda m: None)
    assert s["final_eval"]["eval/loss"] < s["first_eval"]["eval/loss"] - 0.5
