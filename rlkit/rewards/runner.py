"""Score a batch of rows with a reward function: a thread pool, a per-sample timeout, async functions.

    scores, extras = score_rows(fn, rows, num_workers=4, timeout_s=60.0)
    # scores: (B,) float32; extras: {"acc": (B,) float32, ...} from dict results (NaN where a row has none)

Threads, not processes: a rule that waits (a sandbox, an HTTP verifier, an LLM judge) lets the others run,
and the function needs no pickling. A pure-Python rule gains nothing from more threads (the GIL) and loses
little. Each call gets `timeout_s` seconds from its start; a call that runs past it is reported (naming the
function and the row) and left to finish in a daemon thread, since Python cannot stop a thread. With one
worker and no timeout the rows are scored in-line in the calling thread, in order (`breakpoint()` works).

An `async def` function (or one returning an awaitable) is run to completion with `asyncio.run` in the
worker thread; where the calling thread already runs an event loop (a notebook), in a fresh thread.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence

from rlkit.rewards.loader import as_reward_function
from rlkit.rewards.results import (
    RewardError, RewardRow, RewardTimeoutError, RewardValueError, describe_row, split_result,
)

if TYPE_CHECKING:
    import torch  # imported when a batch is scored: `import rlkit.rewards` stays light


class _RowFailed(Exception):
    def __init__(self, index: int, error: BaseException):
        self.index, self.error = index, error


class _RowTimedOut(Exception):
    def __init__(self, index: int):
        self.index = index


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def resolve(value: Any) -> Any:
    """`value`, or its result when it is awaitable (run on a fresh event loop)."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case
        return asyncio.run(_wait(value))
    with ThreadPoolExecutor(1) as pool:  # this thread runs a loop (Jupyter): asyncio.run must not nest
        return pool.submit(asyncio.run, _wait(value)).result()


def run_rows(call: Callable[[int], Any], n: int, num_workers: int, timeout_s: float | None) -> list[Any]:
    """[call(0), ..., call(n - 1)] on `num_workers` daemon threads; raises _RowFailed(i, error) for the first
    call seen to raise, _RowTimedOut(i) for a call running past `timeout_s` seconds."""
    if num_workers == 1 and timeout_s is None:
        out = []
        for i in range(n):
            try:
                out.append(call(i))
            except Exception as e:
                raise _RowFailed(i, e) from e
        return out
    tasks: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        tasks.put(i)
    done: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()
    workers = min(num_workers, n)
    running: list[tuple[int, float] | None] = [None] * workers  # per worker: (row, start) of its current call
    stop = threading.Event()

    def work(slot: int) -> None:
        while not stop.is_set():
            try:
                i = tasks.get_nowait()
            except queue.Empty:
                return
            running[slot] = (i, time.monotonic())
            try:
                outcome = (i, True, call(i))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                outcome = (i, False, e)
            running[slot] = None  # before the result is posted: a finished call is never reported late
            done.put(outcome)

    for slot in range(workers):
        threading.Thread(target=work, args=(slot,), daemon=True, name=f"rlkit-reward-{slot}").start()
    results: list[Any] = [None] * n
    try:
        for _ in range(n):
            while True:
                wait = None
                if timeout_s is not None:
                    now = time.monotonic()
                    started = [r for r in list(running) if r is not None]
                    late = [i for i, t in started if now - t >= timeout_s]
                    if late:
                        raise _RowTimedOut(min(late))
                    wait = min((t + timeout_s - now for _, t in started), default=timeout_s)
                try:
                    i, ok, value = done.get(timeout=wait)
                    break
                except queue.Empty:
                    continue  # a deadline passed: check the running calls again
            if not ok:
                raise _RowFailed(i, value)
            results[i] = value
    finally:
        stop.set()  # idle workers take no further rows
    return results


def score_rows(fn: Any, rows: Sequence[RewardRow], *, num_workers: int = 1, timeout_s: float | None = None,
               where: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scores (B,) float32, extras {key: (B,) float32}) of `fn` over `rows`.

    fn: a reward function in either convention (`rlkit.rewards.as_reward_function`), sync or async.
    num_workers: threads; timeout_s: seconds per call (None: no limit).
    where: added to error messages after the row (e.g. "step 3").
    Raises RewardError (RewardTimeoutError for a timeout) naming the function, the row, its prompt and
    response; the function's own exception is chained.
    """
    import torch

    if num_workers < 1:
        raise ValueError(f"reward.num_workers = {num_workers}: must be >= 1")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"reward.timeout_s = {timeout_s}: must be > 0 (or null for no limit)")
    rf = as_reward_function(fn)
    rows = list(rows)
    try:
        values = run_rows(lambda i: resolve(rf.call_row(rows[i])), len(rows), num_workers, timeout_s)
    except _RowFailed as failed:
        e, i = failed.error, failed.index
        raise RewardError(f"reward function {rf.name} raised {type(e).__name__}: {e}\n  at "
                          f"{describe_row(rows[i], i, where)}", function=rf.name, row=i) from e
    except _RowTimedOut as late:
        i = late.index
        raise RewardTimeoutError(
            f"reward function {rf.name} did not return within reward.timeout_s = {timeout_s} s\n  at "
            f"{describe_row(rows[i], i, where)}\n(the call goes on in a background thread: raise "
            f"reward.timeout_s, or set it to null for no limit)", function=rf.name, row=i) from None

    scores, extras = [], {}
    for i, value in enumerate(values):
        try:
            score, row_extras = split_result(value)
        except RewardValueError as e:
            raise RewardError(f"reward function {rf.name} returned {value!r:.80}, but {e}\n  at "
                              f"{describe_row(rows[i], i, where)}", function=rf.name, row=i) from None
        scores.append(score)
        for key, v in row_extras.items():
            extras.setdefault(key, [math.nan] * len(rows))[i] = v
    return (torch.tensor(scores, dtype=torch.float32).reshape(len(rows)),
            {k: torch.tensor(v, dtype=torch.float32) for k, v in extras.items()})


def extras_stats(extras: dict[str, torch.Tensor], prefix: str = "reward") -> dict[str, float]:
    """`{prefix/key: mean over the rows that have it}` of `score_rows`'s extras (keys no row has are left out)."""
    import torch

    out = {}
    for key, values in extras.items():
        mean = torch.nanmean(values.float()) if values.numel() else torch.tensor(math.nan)
        if not torch.isnan(mean):
            out[f"{prefix}/{key}"] = float(mean)
    return out


__all__ = ["score_rows", "extras_stats", "run_rows", "resolve"]
