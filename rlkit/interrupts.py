"""Ctrl-C (a notebook's stop button) held back while the Session applies an update.

On Ray, interrupting the driver while it waits for `actor.update` does not stop the workers: they finish
the update after the driver gave up, so the weights would move while the step counter, the algorithm's
state and `stats.jsonl` do not (a "ghost" update: every later step number off by one, silently). In one
process (the local backend) an interrupt between two micro-batch backwards stops the update half-way.

So the part of a step that changes the weights (learn: critic and actor updates, the algorithm's
`after_learn`, the weight sync, and the step's bookkeeping) runs under `hold_interrupts`: a first SIGINT
is recorded and re-raised as KeyboardInterrupt once that part is done, so the Session stops at a
consistent step with the update counted. A second SIGINT abandons the wait at once; the Session then
knows it may be inconsistent and says so on its next stage call (resume it from a checkpoint).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class InterruptState:
    """What happened to SIGINT inside one `hold_interrupts` block."""

    def __init__(self, what: str):
        self.what = what
        """The held work, for the messages ("learn (step 12)")."""
        self.received = 0
        """SIGINTs received inside the block."""


@contextmanager
def hold_interrupts(what: str, on_abandon: Callable[[str], None]) -> Iterator[InterruptState]:
    """Run the block with Ctrl-C held back (see the module docstring).

    After the block, a held interrupt is raised as KeyboardInterrupt (unless the block raised something
    else, which then propagates). A second SIGINT calls `on_abandon(message)` and raises at once. Outside
    the main thread (where Python delivers no signals) the block simply runs."""
    state = InterruptState(what)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        state.received += 1
        if state.received == 1:
            print(f"\nrlkit: interrupt received during {what}; finishing it so that the Session stops at a "
                  "consistent step (interrupt again to abandon it: the Session must then be resumed from a "
                  "checkpoint)", file=sys.stderr, flush=True)
            return
        message = (f"a second interrupt abandoned {what} while the workers were still applying it: the "
                   "weights may be ahead of the Session's step counter")
        on_abandon(message)
        raise KeyboardInterrupt(message)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
    if state.received:
        raise KeyboardInterrupt(f"interrupted during {what}; it completed and was counted")


__all__ = ["hold_interrupts", "InterruptState"]
