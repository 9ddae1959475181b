"""Progress bars: one look for every long loop (training steps, reference log-probs, pairs scored), on stderr.

A bar is shown unless the caller turns it off (``output.progress=false``, ``--no-progress``), on a terminal or not:
a terminal redraws it ten times a second, a log file gets a line every 10 s. It is transient (cleared when done),
so what a command prints when it finishes stays the last word. Counted in pairs, its rate reads ``pairs/s``.
"""

from __future__ import annotations

import sys


def bar_interval() -> float:
    """Refresh often on a terminal; rarely when the output goes to a log file."""
    return 0.1 if sys.stderr.isatty() else 10.0


def progress_bar(it=None, *, enabled: bool = True, **kw):
    """A transient tqdm bar over ``it`` (nothing when disabled, e.g. in non-main processes); without ``it``, a bar
    advanced by ``update(k)`` up to ``total``."""
    from tqdm.auto import tqdm

    return tqdm(it, disable=not enabled, leave=False, mininterval=bar_interval(), **kw)


def pair_bar(total: int, desc: str, *, enabled: bool = True):
    """A bar over ``total`` pairs, advanced by ``update(k)`` after each batch of k pairs; its rate is in pairs/s."""
    return progress_bar(total=total, desc=desc, unit=" pairs", enabled=enabled, dynamic_ncols=True, miniters=1)
