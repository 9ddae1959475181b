"""Oracle rewards: fixed, known scorers of text used as the "true" reward of a synthetic preference task.

The MADPO paper (arXiv 2510.05342) scores IMDb continuations with a neural sentiment classifier (its code uses
``cardiffnlp/twitter-roberta-base-sentiment-latest``). dpolab's documented stand-in is VADER (Hutto & Gilbert
2014, the ``vadersentiment`` package): a lexicon- and rule-based scorer that needs no download and no GPU and
is deterministic. Its *compound* score lies in [-1, 1] (positive = positive sentiment). It is a weaker judge than
a classifier: with ``compound >= 0 -> Positive`` it is 0.740 accurate on the IMDb CAD ``orig/test.tsv`` reviews
and 0.767 on ``paired/test_paired.tsv`` (see ``../shared/data/imdb-cad-sentiment/SOURCE.md``), so absolute
rewards are not comparable with the paper's (a different scale, too: the paper's rewards are classifier outputs
around 1-2.5, ours are bounded by 1).

    from dpolab.rewards.oracles import get_oracle
    oracle = get_oracle("vader")
    oracle(["What a wonderful film.", "Dull and far too long."])   # -> [0.57.., -0.38..]

An oracle is any ``Callable[[Sequence[str]], List[float]]``; :func:`register_oracle` adds one under a name
(e.g. a classifier for ``--size paper``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, List, Sequence, Union

from ..errors import MissingPackageError

Oracle = Callable[[Sequence[str]], List[float]]

VADER_PACKAGE = "vadersentiment"


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:
        raise MissingPackageError(
            f"the 'vader' oracle needs the '{VADER_PACKAGE}' package: pip install {VADER_PACKAGE} "
            f'(or pip install -e ".[tasks]")'
        ) from e
    return SentimentIntensityAnalyzer()


def vader_reward(texts: Sequence[str]) -> List[float]:
    """VADER compound sentiment score of each text, in [-1, 1] (deterministic; empty text -> 0.0)."""
    if isinstance(texts, str):
        raise TypeError("vader_reward takes a list of texts, not one string")
    analyzer = _vader()
    return [float(analyzer.polarity_scores(str(t))["compound"]) if t else 0.0 for t in texts]


_ORACLES: Dict[str, Oracle] = {"vader": vader_reward}


def register_oracle(name: str, fn: Oracle) -> None:
    """Make ``fn`` available as ``get_oracle(name)``."""
    if not callable(fn):
        raise TypeError(f"oracle '{name}' must be callable")
    _ORACLES[name] = fn


def list_oracles() -> List[str]:
    return sorted(_ORACLES)


def get_oracle(name: Union[str, Oracle]) -> Oracle:
    """The oracle registered under ``name`` (a callable is returned as is)."""
    if callable(name):
        return name
    if name not in _ORACLES:
        from ..config import ConfigError

        raise ConfigError(f"unknown oracle '{name}'; valid: {', '.join(list_oracles())}")
    return _ORACLES[name]
