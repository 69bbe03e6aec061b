"""How a failing rank stops its peers, with its error, within seconds: one mechanism for every
distributed entry point (data-, CFG- and sequence-parallel sampling).

A rank that raises has usually not died: a server catches the error and stays up, so its peers,
waiting in a collective the failing rank will never enter, would otherwise block for the whole
collective timeout and learn nothing of the cause. ``RankFailures`` prevents both:

- **Status before every collective.** ``collective(what, fn)`` first all-reduces a status (a
  "stop" flag, MAX over the ranks) and runs ``fn`` only when no rank stopped. A rank whose work
  raises (``guard``) takes part in exactly one status exchange with the flag set; every peer meets
  it in its own next exchange, whichever collective that precedes, since the ranks issue their
  collectives in the same order. Then all ranks exchange their error messages (``all_gather_object``)
  and raise the same ``DistributedSamplingError`` naming each failing rank and its exception; the
  process group stays usable for the next call. ``guard`` ends with one more exchange, so a rank
  that fails after the last collective is heard too.
- **A store flag between collectives.** Data-parallel ranks sample different batches and meet only
  once per batch; a failing rank also raises a flag in the rendezvous store, which the others read
  (``check``, at most every ``CHECK_INTERVAL_S``) after each sampling step and stop there, long
  before their own batch ends.

The status travels over the gloo group of the run (a CPU all-reduce of 16 bytes: the flag and the
call's token); under NCCL a gloo group over the same ranks carries it, so the exchange never
synchronises the device. A rank that *dies* or stalls cannot take part: its peers fail when the
backend notices the closed connection (gloo: about a second) or at the collective timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

CHECK_INTERVAL_S = 0.2  # how often a data-parallel rank reads the store flag between steps
STATUS_BYTES = 16  # payload of one status exchange: the stop flag and the call's token (2 int64)

_TOKEN_LOCK = threading.Lock()
_next_token = 1  # this process's proposal for the next call's token (the ranks agree on the max)
_STATUS_GROUPS: dict[Any, Any] = {}  # data group -> the gloo group that carries its status


class DistributedSamplingError(RuntimeError):
    """A rank failed, crashed, timed out, or was started with other settings than rank 0."""


class _PeerStopped(Exception):
    """A peer raised the store flag (internal: becomes a DistributedSamplingError)."""


def _status_group(group):
    """``group`` when it is gloo, else (NCCL) a gloo group over the same ranks, made once. Making
    one is a collective of the default group: every rank reaches it at the same call."""
    if dist.get_backend(group) == "gloo":
        return group
    key = group if group is not None else "default"
    if key not in _STATUS_GROUPS:
        ranks = None if group is None else dist.get_process_group_ranks(group)
        _STATUS_GROUPS[key] = dist.new_group(ranks=ranks, backend="gloo")
    return _STATUS_GROUPS[key]


class RankFailures:
    """The failure channel of one distributed call over the ranks of ``group`` (None: the default
    group), on every one of them. ``rank``/``world_size``: this process's place in that group;
    ``timeout_s``: the group's collective timeout (named in the error of a dead or stalled peer);
    ``what``: the call, as errors name it. With ``world_size == 1`` everything is a no-op.

    Use: ``with failures.guard(): ...`` around the call's work, and ``failures.collective(what, fn)``
    for every collective inside it (all ranks issue the same collectives in the same order);
    ``failures.check()`` between steps where ranks do not meet (data parallel). ``where`` (a short
    string such as "batch 7") is added to this rank's error message."""

    def __init__(self, rank: int, world_size: int, timeout_s: float, what: str, group=None):
        self.rank, self.world_size, self.timeout_s, self.what = rank, world_size, timeout_s, what
        self.group = group
        self.where: str | None = None
        self.exchanges = 0  # status exchanges so far (a test hook)
        self._token = 0  # agreed in the first exchange
        self._stopped = False  # an exchange already reported the failure
        self._broken = False  # a collective failed: the group cannot carry a status
        self._last_check = 0.0
        self._message: str | None = None  # this rank's error, once it failed
        if world_size > 1:
            self._status = _status_group(group)
            self._store = dist.distributed_c10d._get_default_store()

    # -- collectives --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as exc:  # torch.distributed.DistError and the backends' errors
            self._broken = True
            raise DistributedSamplingError(
                f"rank {self.rank}: {what} failed; another rank crashed, was stopped, or did not get there "
                f"within the {self.timeout_s:g} s timeout ({type(exc).__name__}: {exc})"
            ) from exc

    def _exchange(self, stop: bool, before: str) -> None:
        """One status all-reduce (named by the collective ``before`` it); DistributedSamplingError
        naming the failing ranks if any stopped."""
        global _next_token
        with _TOKEN_LOCK:
            proposal = _next_token if self._token == 0 else self._token
        status = torch.tensor([int(stop), proposal], dtype=torch.int64)
        self._call(f"{self.what}: {before}",
                   lambda: dist.all_reduce(status, op=dist.ReduceOp.MAX, group=self._status))  # fmt: skip
        self.exchanges += 1
        if self._token == 0:
            self._token = int(status[1])
            with _TOKEN_LOCK:
                _next_token = max(_next_token, self._token + 1)
        if int(status[0]):
            self._stopped = True
            raise self._combined_error()

    def collective(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a collective of every rank) after a status exchange; DistributedSamplingError
        when a rank stopped (its error) or the collective failed (a dead or stalled peer)."""
        if self.world_size > 1:
            self._exchange(False, what)
        return self._call(f"{self.what}: {what}", fn)

    def check(self) -> None:
        """Between steps: stop (raise) when a peer raised the store flag of this call. Reads the store
        at most every ``CHECK_INTERVAL_S`` seconds; free otherwise."""
        if self.world_size == 1 or self._token == 0:
            return
        now = time.monotonic()
        if now - self._last_check < CHECK_INTERVAL_S:
            return
        self._last_check = now
        if int(self._store.add(self._flag_key, 0)) > 0:
            raise _PeerStopped

    def raised_everywhere(self, error: str | BaseException) -> BaseException:
        """``error`` (a message becomes a DistributedSamplingError) for a failure that every rank finds
        at the same point from the same data (ranks started with other settings, a refused output
        folder that rank 0 broadcast): raised as is on every rank, without a status exchange."""
        self._stopped = True
        return DistributedSamplingError(f"{self.what}: {error}") if isinstance(error, str) else error

    @property
    def _flag_key(self) -> str:
        return f"skipdit/failures/{self._token}"

    # -- the guarded call ---------------------------------------------------------------------

    def _combined_error(self) -> DistributedSamplingError:
        everyone: list = [None] * self.world_size
        self._call(f"{self.what}: exchanging errors",
                   lambda: dist.all_gather_object(everyone, self._message, group=self._status))  # fmt: skip
        failed = [m for m in everyone if m is not None]
        return DistributedSamplingError(f"{self.what}: " + "; ".join(failed or ["a rank stopped without a message"]))

    @contextlib.contextmanager
    def guard(self):
        """Run the call's work; on any exception here, stop every rank of the call with this rank's
        error (see the module docstring). On success, one closing status exchange. Raises
        DistributedSamplingError on every rank (the failing rank's own KeyboardInterrupt or
        SystemExit is re-raised as is, after its peers were told)."""
        if self.world_size == 1:
            yield self
            return
        try:
            yield self
        except BaseException as exc:
            if self._stopped or self._broken:
                raise
            if not isinstance(exc, _PeerStopped):
                where = f" on {self.where}" if self.where else ""
                self._message = f"rank {self.rank} failed{where}: {type(exc).__name__}: {exc}"
                if self._token:
                    with contextlib.suppress(Exception):
                        self._store.add(self._flag_key, 1)  # data-parallel peers read it between steps
            try:
                self._exchange(True, "stopping after an error")
            except DistributedSamplingError as combined:
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise exc from None
                raise combined from (None if isinstance(exc, _PeerStopped) else exc)
            raise AssertionError("a stop exchange always raises") from None  # pragma: no cover
        else:
            self._exchange(False, "finishing")
