"""The demo report's judgement on answer accuracy comes from per-problem paired intervals (dpolab.stats)."""

from __future__ import annotations

from dpolab.demo import AnswerHook, answer_judgement, answer_verdicts


def _hits(correct):
    return {i: float(i in correct) for i in range(40)}


def test_every_method_lowering_answer_accuracy_is_said_only_when_each_interval_shows_it():
    sft = _hits(set(range(30)))
    hits = {"SFT": sft, "DPO": _hits(set(range(10))), "DPOP": _hits(set(range(5)))}
    verdicts = answer_verdicts(hits)
    assert [v.label_a for v in verdicts] == ["DPO", "DPOP"] and all(v.word == "worse" for v in verdicts)
    text = answer_judgement(verdicts, 40)
    assert text.startswith("Every preference method lowered answer accuracy below the SFT start point")
    assert "40 problems" in text and "No preference method raised answer accuracy" in text
    hits["Gate"] = dict(sft)  # the same answers as SFT: not lowered
    text = answer_judgement(answer_verdicts(hits), 40)
    assert text.startswith("Not every preference method lowered answer accuracy") and "1 is negligible (Gate)" in text
    assert "smallest meaningful difference of ±0.02 of accuracy" in text
    hits["Gate"] = {i: float(i < 30 or i == 35) for i in range(40)}  # one more problem right: +0.025, CI reaches 0
    assert answer_verdicts(hits)[-1].word == "inconclusive"


def test_answer_hook_keeps_each_problems_hit():
    class Tok:  # generation is stubbed below; only the hook's bookkeeping is under test
        pass

    hook = AnswerHook([{"prompt": "1+1", "answer": 2}, {"prompt": "2+2", "answer": 4}])
    import dpolab.evaluation.generation as gen

    original = gen.generate
    gen.generate = lambda model, tok, prompts, **kw: ["1+1=2", "2+2=5"]
    try:
        out = hook(None, Tok(), 0)
    finally:
        gen.generate = original
    assert hook.hits == {0: 1.0, 1: 0.0} and out == {"answer_accuracy": 0.5, "answer_parsed": 1.0}
