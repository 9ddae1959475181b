"""Hold Ctrl-C and SIGTERM while a write that must finish is under way.

An interrupt raised inside ``torch.save`` or a model's ``save_pretrained`` leaves the writer half-way; its clean-up
then fails too (torch's zip writer raises ``RuntimeError('unexpected pos ...')``) and that error replaces the
interrupt, so a run stopped by its scheduler while writing a checkpoint ended with a traceback and exit status 1
instead of its resume hint and 143. Inside :func:`deferred_interrupts` the first SIGINT or SIGTERM is only noted (one
line on stderr says so); when the block ends, the write complete, it is delivered to the handler that was there
before. A second one during the block is delivered at once: a user who insists stops at once (the write is then
dropped, as any failed atomic write is).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Dict, Iterator, List, Tuple

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deliver(signum: int, frame, handler) -> None:
    """Run what ``handler`` (a previous ``signal.getsignal``) would have done on ``signum``."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default action (terminate): send it again, now with nothing in the way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def deferred_interrupts(what: str = "the files being written") -> Iterator[None]:
    """Inside the block, the first SIGINT / SIGTERM waits until the block ends; ``what`` names the work in the
    notice. Outside the main thread (where Python cannot set handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread() or any(
        getattr(signal.getsignal(sig), "_dpolab_hold", False) for sig in _SIGNALS
    ):  # no handlers off the main thread; inside an outer block its hold already covers this one
        yield
        return
    previous: Dict[int, object] = {}
    for sig in _SIGNALS:
        handler = signal.getsignal(sig)
        if handler not in (signal.SIG_IGN, None):  # ignored, or set outside Python: left alone
            previous[sig] = handler
    pending: List[Tuple[int, object]] = []

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def hold(signum, frame) -> None:
        if pending:  # the second: the user insists
            restore()
            _deliver(signum, frame, previous[signum])
            return
        pending.append((signum, frame))
        name = signal.Signals(signum).name
        print(f"{name}: finishing {what} first (send it again to stop at once)", file=sys.stderr, flush=True)

    hold._dpolab_hold = True  # type: ignore[attr-defined]
    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        restore()
    if pending:  # only after a block that ended normally: an error inside it is what the caller sees
        signum, frame = pending[0]
        _deliver(signum, frame, previous[signum])


def interrupt_behind(e: BaseException) -> "KeyboardInterrupt | None":
    """The ``KeyboardInterrupt`` in ``e``'s cause/context chain, if any: a library's clean-up that failed after an
    interrupt (and so replaced it) still counts as that interrupt."""
    seen = set()
    cur: "BaseException | None" = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
