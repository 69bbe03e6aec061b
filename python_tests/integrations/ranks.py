"""Run a test function on several spawned CPU processes joined by gloo over 127.0.0.1, each with a
deadline, so a hang fails the test instead of blocking CI."""

from __future__ import annotations

import importlib
import os
import pickle
import socket
import time
import traceback

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 15.0  # the collectives' timeout inside the spawned ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, target: str, kwargs: dict, out: str, timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    try:
        from skipdit_kernels.integrations.distributed import init_distributed

        info = init_distributed(backend="gloo", timeout_s=timeout_s)
        module, name = target.split(":")
        payload = ("ok", getattr(importlib.import_module(module), name)(info, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        payload = ("error", type(exc).__name__, str(exc), traceback.format_exc())
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(payload, f)
    if payload[0] == "ok":
        torch.distributed.destroy_process_group()


def run_ranks(tmp_path, world: int, target: str, deadline_s: float = 60, timeout_s: float = TIMEOUT_S, **kwargs):
    """``target`` ("module:function", called as ``function(info, **kwargs)`` on every rank) on
    ``world`` spawned processes; (each rank's payload: ("ok", result) or ("error", type, message,
    traceback), None for a rank that left none; seconds)."""
    out = tmp_path / f"ranks-{target.split(':')[1]}-{time.monotonic_ns()}"
    out.mkdir()
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, target, dict(kwargs), str(out), timeout_s))
             for r in range(world)]  # fmt: skip
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(1.0, deadline_s - (time.perf_counter() - started)))
    seconds = time.perf_counter() - started
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {deadline_s} s"
    payloads = []
    for r in range(world):
        path = out / f"rank{r}.pkl"
        payloads.append(pickle.loads(path.read_bytes()) if path.exists() else None)
    return payloads, seconds


def ok(payload):
    assert payload is not None and payload[0] == "ok", payload[3] if payload else "rank left no result"
    return payload[1]
