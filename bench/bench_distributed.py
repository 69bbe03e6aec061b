"""1 process vs 2 processes (torch.distributed, gloo over 127.0.0.1) on this machine's CPUs:

- CFG-parallel latency of one guided request: ``sample()`` in one process (the model runs the
  conditional and unconditional halves as one batch of 2N) vs ``sample_cfg_parallel`` on 2 ranks
  (each runs a batch of N; one all_gather of the model output per step);
- data-parallel throughput: ``sample_ddp`` of a fixed set of samples on 1 rank vs 2 ranks.

    python bench/bench_distributed.py [--rounds 3] [--models bundled DiT-S/2]

Every setup runs in fresh spawned processes; "1x2" = 1 process with 2 threads (the whole of a
2-core machine), "1x1" = 1 process with 1 thread, "2x1" = 2 processes with 1 thread each. Times
are the rank-0 wall time from a barrier to the return, after one warm-up run in the same
processes; the setups are interleaved round by round (each round spawns every setup once, so load
drifts hit all alike): median and min-max of --rounds. Results:
bench/results/distributed-<device tag>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

SETUPS = {"1x2": (1, 2), "1x1": (1, 1), "2x1": (2, 1)}  # processes, threads each
MODELS = {
    # name: (description, shallow blocks for Skip-Cache)
    "bundled": ("bundled SkipDiT (16x16 digits, depth 8, hidden 96)", 1),
    "DiT-S/2": ("SkipDiT DiT-S/2 random weights, 256px (32x32 latents, 256 tokens)", 4),
}


def build(name: str):
    if name == "bundled":
        from skipdit_kernels.embedded import load_bundled

        return load_bundled("skipdit")
    from skipdit_kernels import SkipDiT

    torch.manual_seed(0)
    return SkipDiT.from_preset(name, input_size=32, num_classes=1000).eval()


def _worker(rank: int, world: int, port: int, job: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(job["threads"])
    import torch.distributed as dist

    from skipdit_kernels import SkipCache, sample
    from skipdit_kernels.integrations.distributed import RankInfo, init_distributed, sample_cfg_parallel, sample_ddp

    info = init_distributed("gloo", timeout_s=900) if world > 1 else RankInfo(0, 1, torch.device("cpu"), 900.0)
    model = build(job["model"])
    cache = SkipCache(interval=2, shallow_blocks=MODELS[job["model"]][1]) if job["cache"] else None
    common = dict(steps=job["steps"], method="ddim", cfg_scale=4.0, cache=cache, seed=0, progress=False)
    labels = list(range(job["batch"]))
    times = []
    for r in range(1 + job["rounds"]):
        if world > 1:
            dist.barrier()
        started = time.perf_counter()
        if job["mode"] == "cfg-parallel" and world == 2:
            sample_cfg_parallel(model, labels, info=info, **common)
        elif job["mode"] == "cfg-parallel":
            sample(model, labels, **common)
        else:
            sample_ddp(model, job["samples"], os.path.join(job["dir"], f"round{r}"), batch_size=job["batch"],
                       info=info, **common)  # fmt: skip
        times.append(time.perf_counter() - started)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times[1:], f)
    if world > 1:
        dist.destroy_process_group()


def run_job(job: dict, world: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "dir": tmp}
        out = os.path.join(tmp, "times.json")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, world, port, job, out)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise RuntimeError(f"{job} on {world} process(es) failed: exit codes {[p.exitcode for p in procs]}")
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--out", default=report.RESULTS_DIR, help="results directory")
    args = parser.parse_args()
    rows, began = [], time.perf_counter()
    env = report.environment()
    for model in args.models:
        for mode, batch, samples in (("cfg-parallel", 2, 2), ("data-parallel", 2, 4)):
            for cache in (False, True):
                job = dict(model=model, mode=mode, batch=batch, samples=samples, steps=args.steps, cache=cache,
                           rounds=1)  # fmt: skip
                times = {setup: [] for setup in SETUPS}
                for _ in range(args.rounds):
                    for setup, (world, threads) in SETUPS.items():
                        times[setup] += run_job({**job, "threads": threads}, world)
                timing = {setup: report.stats(t) for setup, t in times.items()}
                for setup, t in timing.items():
                    print(model, mode, cache, setup, [round(s, 3) for s in t["samples_s"]], flush=True)
                    rows.append(dict(model=model, measure=mode, cache="interval 2" if cache else "off", setup=setup,
                                     batch=batch, samples=samples, median_s=t["median_s"], min_s=t["min_s"],
                                     max_s=t["max_s"], samples_per_s=samples / t["median_s"],
                                     speedup_1x2=report.round_ratio(timing, setup, "1x2")["ratio"],
                                     speedup_1x1=report.round_ratio(timing, setup, "1x1")["ratio"]))  # fmt: skip
    notes = [
        "CPU only, no GPU: gloo over 127.0.0.1 between processes on the same 2 cores. These numbers say what "
        "splitting costs and saves on a 2-core CPU box, nothing about GPUs (where each rank has its own device).",
        "setup: 1x2 = 1 process, 2 threads; 1x1 = 1 process, 1 thread; 2x1 = 2 processes (torch.distributed, "
        "gloo), 1 thread each. speedup vs 1xT = median over rounds of the 1xT row's time / this row's time.",
        "On a loaded machine, 2 OpenMP threads in one process wait on each other whenever one is descheduled, "
        "so 1x2 can be far slower than 1x1; 2x1 (no shared thread pool) is the fairer comparison to 1x1 then.",
        f"DDIM {args.steps} steps, CFG scale 4, fp32, eager; Skip-Cache interval 2 (shallow blocks: "
        + ", ".join(f"{m} {MODELS[m][1]}" for m in args.models) + ").",
        "cfg-parallel: one request of `batch` labels; 1 process = sample() (model batch 2 x batch), "
        "2 processes = sample_cfg_parallel (model batch `batch` per rank, one all_gather per step).",
        "data-parallel: sample_ddp of `samples` samples in batches of `batch` (including rank 0 writing the "
        "batch files and the .npz); samples/s is the throughput.",
        "models: " + "; ".join(f"{m}: {MODELS[m][0]}" for m in args.models) + ".",
        f"median, min and max of {args.rounds} rounds, the setups interleaved round by round (each after one "
        "warm-up run in its processes), rank-0 wall time from a barrier; "
        f"whole benchmark {time.perf_counter() - began:.0f} s.",
    ]
    columns = [("model", "model"), ("measure", "measure"), ("cache", "Skip-Cache"), ("setup", "processes x threads"),
               ("batch", "batch"), ("samples", "samples"), ("median_s", "median s"), ("min_s", "min s"), ("max_s", "max s"),
               ("samples_per_s", "samples/s"), ("speedup_1x2", "speedup vs 1x2"),
               ("speedup_1x1", "speedup vs 1x1")]  # fmt: skip
    stem = report.write_results("distributed", rows, columns, meta=vars(args), notes=notes, env=env, out_dir=args.out,
                         title="1 vs 2 processes (torch.distributed on CPU)")  # fmt: skip
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
