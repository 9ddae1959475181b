"""Oracle rewards: VADER ranks obvious sentences the right way; the registry."""

from __future__ import annotations

import pytest

from dpolab.rewards import oracles as O

pytest.importorskip("vaderSentiment", reason="vadersentiment not installed (pip install vadersentiment)")


def test_vader_orders_obvious_sentences():
    pos, neg, neutral = O.vader_reward(
        [
            "What a wonderful, beautiful and moving film. I loved it!",
            "A terrible, boring waste of time. I hated it.",
            "The film is 120 minutes long.",
        ]
    )
    assert pos > 0.5 and neg < -0.5 and pos > neutral > neg
    assert all(-1.0 <= s <= 1.0 for s in (pos, neg, neutral))
    assert O.vader_reward(["", "great"])[0] == 0.0
    assert O.vader_reward(["great"]) == O.vader_reward(["great"])  # deterministic


def test_registry():
    assert O.get_oracle("vader") is O.vader_reward and "vader" in O.list_oracles()
    fn = lambda texts: [1.0 for _ in texts]  # noqa: E731
    assert O.get_oracle(fn) is fn
    O.register_oracle("ones-test", fn)
    assert O.get_oracle("ones-test")(["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown oracle 'nope'; valid: .*vader"):
        O.get_oracle("nope")
    with pytest.raises(TypeError):
        O.vader_reward("one string")


def test_missing_package_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    O._vader.cache_clear()
    try:
        with pytest.raises(ImportError, match="vadersentiment"):
            O.vader_reward(["good"])
    finally:
        O._vader.cache_clear()
