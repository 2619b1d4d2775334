"""Environment calls run side by side, each with a deadline: many episodes step at once, a slow one never
holds the others, and a hung one is reported instead of hanging the rollout.

Why daemon threads and not a `ThreadPoolExecutor`: a call that never returns cannot be killed in Python; an
executor's threads are joined when the interpreter exits, so one hung `env.step` would hang the notebook's
shutdown. Here a timed-out call's thread is abandoned (it keeps running until it returns) and a fresh one
takes its place, so capacity stays `num_workers`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class CallTimeout(TimeoutError):
    """An environment call ran past its deadline (it may still be running on its abandoned thread)."""


@dataclass
class CallOutcome:
    """What one call gave: its value, or the exception it raised (a `CallTimeout` past the deadline)."""

    value: Any = None
    error: BaseException | None = None


def run_calls(calls: Sequence[Callable[[], Any]], *, num_workers: int, timeout_s: float | None) -> list[CallOutcome]:
    """Run every zero-argument call on up to `num_workers` threads; one outcome per call, in order.

    Each call's deadline counts from when it starts (not from when it was queued). With one worker and no
    timeout the calls run in this thread, in order: the simplest thing to debug (`breakpoint()` works)."""
    if num_workers < 1:
        raise ValueError(f"run_calls: num_workers = {num_workers} must be >= 1")
    if num_workers == 1 and timeout_s is None:
        return [_call(fn) for fn in calls]
    outcomes: list[CallOutcome | None] = [None] * len(calls)
    started: dict[int, float] = {}  # call index -> perf_counter at start, while it runs
    lock = threading.Lock()
    todo: queue.Queue = queue.Queue()
    for i in range(len(calls)):
        todo.put(i)

    def worker() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                if outcomes[i] is not None:
                    continue
                started[i] = time.perf_counter()
            result = _call(calls[i])
            with lock:
                started.pop(i, None)
                if outcomes[i] is None:  # not already declared timed out
                    outcomes[i] = result

    def spawn() -> None:
        threading.Thread(target=worker, daemon=True, name="rlkit-env").start()

    for _ in range(min(num_workers, len(calls))):
        spawn()
    while True:
        with lock:
            if all(o is not None for o in outcomes):
                return outcomes  # type: ignore[return-value]
            now = time.perf_counter()
            late = [i for i, t in started.items() if timeout_s is not None and now - t > timeout_s]
            for i in late:
                started.pop(i)
                outcomes[i] = CallOutcome(error=CallTimeout(f"did not return within {timeout_s:g} s"))
        for _ in late:  # the late call's thread is stuck: another one takes over the queue
            spawn()
        time.sleep(0.002)


def _call(fn: Callable[[], Any]) -> CallOutcome:
    try:
        return CallOutcome(value=fn())
    except Exception as err:  # reported with the episode, sample and turn by the caller
        return CallOutcome(error=err)


__all__ = ["CallTimeout", "CallOutcome", "run_calls"]
