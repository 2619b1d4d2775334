"""Futures returned by `group.role.method.submit(...)`.

A Ray future waits on one object ref per rank with `ray.wait`, one at a time, so the
first failure is raised as soon as it is known: a rank that raised, or a process that
died, is reported within seconds even while the other ranks are still blocked (for
example inside a collective that the dead rank will never join).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rlkit.cluster.errors import WorkerDiedError, WorkerError
from rlkit.cluster.worker import Failure

# How often a waiting driver wakes up (lets Ctrl-C / Jupyter interrupt reach Python).
_POLL_S = 0.5
_MAX_CAUSE_LINES = 12


class WorkerFuture:
    """The pending result of one call on a worker group; `result()` blocks, `done()` does not."""

    def result(self, timeout: float | None = None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def done(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, rank: int = 0) -> Any:
        """Rank `rank`'s raw result as an argument of another call, without the driver fetching it: on Ray the
        receiving worker reads it from the object store (`Forwarded`), so a large result (a state dict) goes from
        worker to worker once. An error of this call is raised in the receiving call."""
        raise NotImplementedError  # pragma: no cover - interface


class Forwarded:
    """A result left in Ray's object store, resolved by the worker that receives it as an argument."""

    __slots__ = ("ref", "what")

    def __init__(self, ref: Any, what: str):
        self.ref, self.what = ref, what

    def resolve(self) -> Any:
        import ray

        value = ray.get(self.ref)
        if isinstance(value, Failure):
            raise RuntimeError(f"the argument forwarded from {self.what} is an error raised there: "
                               f"{value.exc_type} on {value.host}\n{value.traceback}")
        return value


class LocalFuture(WorkerFuture):
    """A call already run in the calling process (local backend); re-raises its exception unchanged."""

    def __init__(self, value: Any = None, error: BaseException | None = None, raw: list | None = None):
        """value / error: the call's collected result or its exception; raw: each rank's own result (what
        `forward` hands on; default: `value` on rank 0)."""
        self._value, self._error = value, error
        self._raw = raw

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return True

    def forward(self, rank: int = 0) -> Any:
        value = self.result()  # raises this call's error at the forwarding call (one process: no later place)
        return self._raw[rank] if self._raw is not None else value


class RayFuture(WorkerFuture):
    """One object ref per rank, collected in rank order once all have arrived."""

    def __init__(
        self,
        refs: list,
        role: str,
        method: str,
        finish: Callable[[list], Any],
        on_death: Callable[[int, str], WorkerDiedError],
        world_size: int,
    ):
        self._refs = refs
        self._role, self._method = role, method
        self._finish = finish
        self._on_death = on_death
        self._world_size = world_size
        self._values: list = [None] * len(refs)
        self._pending = list(refs)
        self._rank_of = {ref: rank for rank, ref in enumerate(refs)}
        self._outcome: tuple[bool, Any] | None = None  # (ok, value or exception), once known

    def done(self) -> bool:
        if self._outcome is not None or not self._pending:
            return True
        import ray

        ready, _ = ray.wait(self._pending, num_returns=len(self._pending), timeout=0)
        return len(ready) == len(self._pending)

    def forward(self, rank: int = 0) -> Forwarded:
        return Forwarded(self._refs[rank], f"{self._role}.{self._method} rank {rank}")

    def result(self, timeout: float | None = None) -> Any:
        if self._outcome is None:
            try:
                self._outcome = (True, self._finish(self._gather(timeout)))
            except TimeoutError:
                raise  # not an outcome: the call may still finish
            except Exception as exc:
                self._outcome = (False, exc)
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _gather(self, timeout: float | None) -> list:
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            wait_s = _POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.monotonic()))
            ready, self._pending = ray.wait(self._pending, num_returns=1, timeout=wait_s)
            for ref in ready:
                rank = self._rank_of[ref]
                self._values[rank] = self._fetch(ref, rank)
            if deadline is not None and self._pending and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self._role}.{self._method}: ranks {sorted(self._rank_of[r] for r in self._pending)} "
                    f"did not answer within {timeout} s (the call is still running)"
                )
        return self._values

    def _fetch(self, ref, rank: int) -> Any:
        import ray
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, RayError, WorkerCrashedError

        try:
            value = ray.get(ref)
        except (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError) as exc:
            raise self._on_death(rank, _short(exc)) from None
        except RayError as exc:
            # Ray failed around the call (argument or result (de)serialisation, out of memory ...).
            raise WorkerError(
                self._role, self._method, rank, self._world_size, type(exc).__name__, str(exc), "ray"
            ) from None
        if isinstance(value, Failure):
            raise WorkerError(
                self._role, self._method, rank, self._world_size, value.exc_type, value.traceback, value.host
            )
        return value


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    if len(lines) > _MAX_CAUSE_LINES:
        lines = lines[:_MAX_CAUSE_LINES] + ["..."]
    return f"{type(exc).__name__}: " + "\n".join(lines)
