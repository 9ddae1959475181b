"""Scoring at training speed (issue 33 item 2): `dpolab eval` scores pairs longest first, in the prompt-prefix layout
through the response-only head, and gets the plain padded forward's log-probs (fp32, within 1e-4) with every
per-pair row in file order; `--bf16` and `--threads` are accepted as train's, a bad value refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from dpolab.cli import main
from dpolab.config import LoraConfig, ModelConfig
from dpolab.errors import ConfigError
from dpolab.evaluation import preference as ev
from dpolab.models.device import resolve_bf16
from dpolab.models.load import load_policy, load_saved_model, save_model
from dpolab.models.logprobs import gather_logps
from dpolab.models.tokenizer import build_char_tokenizer

FAMILIES = ["tiny-gpt2", "tiny-llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_model(request, tmp_path_factory):
    tok = build_char_tokenizer()
    cfg = ModelConfig(name_or_path=request.param)
    path = tmp_path_factory.mktemp("model") / request.param
    save_model(load_policy(cfg, LoraConfig(), tok, seed=0), tok, path, cfg)
    return str(path)


@pytest.fixture()
def pairs_file(tmp_path):
    """Pairs of very different lengths, the longest neither first nor last, so that sorting moves them."""
    rows = [
        {
            "prompt": "Q: " + "x" * (3 + 7 * (i % 4)) + f" {i}?\nA: ",
            "chosen": "yes " * (1 + i % 3),
            "rejected": "no" * i,
        }
        for i in range(1, 8)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), rows


def _plain_logps(model_path, path):
    """Each pair's summed (chosen, rejected) response log-probs from a plain padded fp32 forward over the whole file
    in file order (the same tokenised pairs `dpolab eval` reads): all logits, then the response tokens'."""
    from dpolab.data.collate import collate_preference
    from dpolab.data.dataset import load_preference_data
    from dpolab.models.logprobs import split_pairs

    tok = build_char_tokenizer()
    model = load_saved_model(model_path, tok).eval()
    pairs, _ = load_preference_data(path, tok, max_length=512, log=lambda m: None)
    b = collate_preference(pairs, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    c, r = split_pairs(gather_logps(logits, b.input_ids, b.loss_mask).sums, len(pairs))
    return list(zip(c.tolist(), r.tolist()))


def test_eval_scores_equal_the_plain_forward_in_file_order(tiny_model, pairs_file, tmp_path, monkeypatch):
    path, rows = pairs_file
    seen = []
    real = ev.preference_outputs

    def spy(policy, reference, batch, **kw):  # what each batch was collated as
        seen.append((batch.packed is not None, batch.num_pairs))
        return real(policy, reference, batch, **kw)

    monkeypatch.setattr(ev, "preference_outputs", spy)
    out = tmp_path / "per_pair.jsonl"
    ev.evaluate_preference_file(tiny_model, path, batch_size=3, per_pair=str(out), log=lambda m: None, bf16="false")
    assert seen and all(packed for packed, _ in seen)  # the prefix-sharing layout, as training
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(len(rows))) and [r["row"] for r in recs] == list(range(1, 8))
    plain = _plain_logps(tiny_model, path)
    for rec, (c, r) in zip(recs, plain):
        assert rec["logp_chosen"] == pytest.approx(c, abs=1e-4) and rec["logp_rejected"] == pytest.approx(r, abs=1e-4)


def test_pairs_are_scored_longest_first():
    from dpolab.data.types import TokenizedPair

    lengths = [3, 9, 1, 9, 5]
    pairs = [TokenizedPair(prompt_ids=[1] * n, chosen_ids=[2], rejected_ids=[3, 3]) for n in lengths]
    tok = build_char_tokenizer()
    model = load_policy(ModelConfig(name_or_path="tiny-gpt2"), LoraConfig(), tok, seed=0).eval()
    with torch.no_grad():
        order = [i for idx, _ in ev.score_preference_pairs(model, None, pairs, 0, 2, torch.device("cpu")) for i in idx]
    assert order == [1, 3, 4, 0, 2]


def test_bf16_and_threads_options(tiny_model, pairs_file, capsys):
    path, _ = pairs_file
    logs = []
    before = torch.get_num_threads()
    try:
        res = ev.evaluate_preference_file(tiny_model, path, log=logs.append, bf16="true", threads=1, progress=False)
        assert res["pairs"] == 7 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "device: cpu (bf16 autocast) (--bf16=true); torch threads 1 (--threads=1)" in logs
    with pytest.raises(ConfigError, match="--bf16: 'maybe' is not valid; choose true, false or auto"):
        ev.evaluate_preference_file(tiny_model, path, log=logs.append, bf16="maybe")
    assert main(["eval", "--model", tiny_model, "--data", path, "--threads", "0", "--no-progress"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: only auto, true, false
        main(["eval", "--model", tiny_model, "--data", path, "--bf16", "yes"])


def test_bf16_auto_is_trains_rule():
    cpu = torch.device("cpu")
    assert resolve_bf16("auto", cpu, flags={"avx2", "avx512_bf16"})[0] is True
    assert resolve_bf16("auto", cpu, flags={"avx2"})[0] is False
    assert resolve_bf16("false", cpu) == (False, "--bf16=false")


def test_rm_score_takes_bf16_and_threads(tmp_path, capsys):
    from tests.integration.test_reward_model import TINY_ARGS, write_pairs

    train = write_pairs(tmp_path / "tr.jsonl", 16, seed=0)
    assert (
        main(["rm", "train", *TINY_ARGS, f"data.train={train}", "train.max_steps=1", f"output.dir={tmp_path}/rm"]) == 0
    )
    data, model = write_pairs(tmp_path / "pairs.jsonl", 6, seed=3), str(tmp_path / "rm" / "final")
    before = torch.get_num_threads()
    outs = {}
    try:
        for bf16 in ("false", "true"):
            outs[bf16] = tmp_path / f"scored-{bf16}.jsonl"
            argv = ["rm", "score", "--model", model, "--data", str(data), "--out", str(outs[bf16]), "--no-progress"]
            assert main(argv + ["--bf16", bf16, "--threads", "1"]) == 0
            err = capsys.readouterr().err
            assert f"(--bf16={bf16}); torch threads 1 (--threads=1)" in err
    finally:
        torch.set_num_threads(before)
    fp32, bf = ([json.loads(x)["reward_chosen"] for x in outs[k].read_text().splitlines()] for k in ("false", "true"))
    assert fp32 != bf and bf == pytest.approx(fp32, abs=0.1)  # bf16 really ran, and rounds only
    argv = ["rm", "score", "--model", model, "--data", str(data), "--out", str(tmp_path / "x.jsonl"), "--threads", "0"]
    assert main(argv) == 2 and "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_reference_table_scores_training_pairs_longest_first_and_held_out_as_evaluation():
    from dpolab.models.reference import table_batches

    lengths = [1, 5, 3, 4, 9, 9, 2]
    assert table_batches(7, 2, (0, 4), lengths) == [[1, 3], [2, 0], [4, 5], [6]]  # held-out [4, 7): consecutive
    assert table_batches(7, 2, (0, 4)) == [[0, 1], [2, 3], [4, 5], [6]]
    assert table_batches(3, 2, (0,), [1, 5, 3]) == [[0, 1], [2]]  # one segment: evaluation's own batches


@pytest.mark.parametrize("family", FAMILIES)
def test_probes_score_through_the_fast_path_in_probe_order(family, monkeypatch):
    import dpolab.models.fastpath as fastpath
    from dpolab.diagnostics import probes as pr
    from dpolab.models.logprobs import response_logps

    tok = build_char_tokenizer()
    model = load_policy(ModelConfig(name_or_path=family), LoraConfig(), tok, seed=0).eval()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("Q: " + "y" * (2 + 5 * (i % 3)) + "?\\nA: ") for i in range(5)]
    responses = {"chosen": [enc("ok" * (1 + i)) for i in range(5)], "random": [enc("z" * (7 - i)) for i in range(5)]}
    probe_set = pr.ProbeSet(prompts=prompts, responses=responses, buckets=["all"] * 5)
    calls = []
    real = fastpath.logps_for_batch
    monkeypatch.setattr(
        fastpath, "logps_for_batch", lambda m, b, **kw: calls.append(b.packed is not None) or real(m, b, **kw)
    )
    got = pr.score_probes(model, probe_set, tok.pad_token_id, batch_size=2)
    assert calls and all(calls)  # the packed layout, response-only head
    for cat, resp in responses.items():
        b = pr._batch(prompts, resp, tok.pad_token_id, "cpu")
        with torch.no_grad():
            want = response_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"]).sums
        assert torch.allclose(got[cat], want, atol=1e-4), cat
