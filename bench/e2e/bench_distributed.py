"""1 process vs 2 processes (torch.distributed, gloo over 127.0.0.1) on this machine's CPUs:

- CFG-parallel latency of one guided request: ``sample()`` in one process (the model runs the
  conditional and unconditional halves as one batch of 2N) vs ``sample_cfg_parallel`` on 2 ranks
  (each runs a batch of N; one all_gather of the model output per step);
- data-parallel throughput: ``sample_ddp`` of a fixed set of samples on 1 rank vs 2 ranks.

    python bench/e2e/bench_distributed.py [--rounds 3] [--models bundled DiT-S/2]
    python bench/e2e/bench_distributed.py --sequence-parallel [--rounds 3]

``--sequence-parallel``: one guided request in 1 process (``sample()``) vs its tokens over 2
processes (``sample_sequence_parallel``), SkipDiT DiT-S/2 and LatteSkip Latte-S/2, Skip-Cache off and
interval 2 with forecast; besides the time, the largest difference from the 1-process latents and
the bytes rank 0 sends per full and per cached step. Results:
bench/results/sequence-parallel-cpu-gloo-<date>-<device tag>.{json,md}.

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(
    1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)  # python_tests (randomize)
import report  # noqa: E402

SETUPS = {"1x2": (1, 2), "1x1": (1, 1), "2x1": (2, 1)}  # processes, threads each
MODELS = {
    # name: (description, shallow blocks for Skip-Cache)
    "bundled": ("bundled SkipDiT (16x16 digits, depth 8, hidden 96)", 1),
    "DiT-S/2": ("SkipDiT DiT-S/2 random weights, 256px (32x32 latents, 256 tokens)", 4),
}


def build(name: str):
    if name == "bundled":
        from skipdit_kernels.evaluation.bundled import load_bundled

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


SP_MODELS = {
    # name: (description, shallow blocks for Skip-Cache)
    "DiT-S/2": ("SkipDiT DiT-S/2 random weights, 256px (32x32 latents: 256 tokens, 6 heads, 12 blocks)", 2),
    "Latte-S/2": (
        "LatteSkip Latte-S/2 random weights, 8 frames of 16x16 latents (64 tokens a frame, 6 heads, 6 pairs)",
        1,
    ),
}


def build_sp(name: str):
    from python_tests.models.conftest import randomize
    from skipdit_kernels import LatteSkip, SkipDiT

    torch.manual_seed(0)
    if name == "DiT-S/2":
        model = SkipDiT.from_preset(name, input_size=32, num_classes=1000)
    else:
        model = LatteSkip.from_preset(name, input_size=16, num_frames=8, extras=2, num_classes=101)
    return randomize(model, seed=1, std=0.02).eval()  # the official init zeroes the adaLN: random weights


def _sp_worker(rank: int, world: int, port: int, job: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    from skipdit_kernels import SkipCache, sample
    from skipdit_kernels.integrations.distributed import init_distributed, sample_sequence_parallel

    model = build_sp(job["model"])
    cache = SkipCache(interval=2, shallow_blocks=SP_MODELS[job["model"]][1], forecast=1) if job["cache"] else None
    common = dict(steps=job["steps"], method="ddim", cfg_scale=4.0, cache=cache, seed=0, progress=False)
    info = init_distributed("gloo", timeout_s=900) if world > 1 else None
    times, result = [], None
    for _ in range(1 + job["rounds"]):
        if world > 1:
            dist.barrier()
        started = time.perf_counter()
        if world > 1:
            result = sample_sequence_parallel(model, [1], info=info, return_stats=True, **common)
        else:
            result = (sample(model, [1], **common), None)
        times.append(time.perf_counter() - started)
    if rank == 0:
        stats = result[1]
        torch.save(dict(times=times[1:], latents=result[0], stats=None if stats is None else vars(stats)), out)
    if world > 1:
        dist.destroy_process_group()


def run_job(job: dict, world: int, worker=None) -> list[float] | dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "dir": tmp}
        out = os.path.join(tmp, "times.json")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker or _worker, args=(r, world, port, job, out)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise RuntimeError(f"{job} on {world} process(es) failed: exit codes {[p.exitcode for p in procs]}")
        if worker is not None:
            return torch.load(out, weights_only=False)
        with open(out) as f:
            return json.load(f)


def sequence_parallel_main(args) -> None:
    """1 process vs 2 sequence-parallel processes (see the module docstring)."""
    rows, began = [], time.perf_counter()
    env = report.environment()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    for model in SP_MODELS:
        for cache in (False, True):
            job = dict(model=model, steps=args.steps, cache=cache, rounds=1)
            times, last = {"1x1": [], "2x1 sequence-parallel": []}, {}
            for _ in range(args.rounds):
                for setup, world in (("1x1", 1), ("2x1 sequence-parallel", 2)):
                    last[setup] = run_job(job, world, worker=_sp_worker)
                    times[setup] += last[setup]["times"]
            timing = {setup: report.stats(t) for setup, t in times.items()}
            reference = last["1x1"]["latents"]
            for setup, t in timing.items():
                stats = last[setup]["stats"]
                full = cached = None
                if stats:
                    per_step = list(zip(stats["full_steps"], stats["bytes_per_step"]))
                    full = max(b for f, b in per_step if f)
                    cached = max((b for f, b in per_step if not f), default=None)
                diff = (last[setup]["latents"] - reference).abs().max().item()
                print(model, cache, setup, [round(s, 3) for s in t["samples_s"]], diff, full, cached, flush=True)
                rows.append(dict(model=model, cache="interval 2, forecast 1" if cache else "off", setup=setup,
                                 median_s=t["median_s"], min_s=t["min_s"], max_s=t["max_s"],
                                 speedup=report.round_ratio(timing, setup, "1x1")["ratio"],
                                 max_abs_diff=diff, latent_max=reference.abs().max().item(),
                                 full_step_mib=None if full is None else full / 2**20,
                                 cached_step_mib=None if cached is None else cached / 2**20,
                                 status_exchanges=None if not stats else stats["status_exchanges"]))  # fmt: skip
            stem = _write_sequence_parallel(
                args, rows, env, began, date
            )  # after every group: a stopped run keeps its rows
    print(f"wrote {stem}.json and .md")


def _write_sequence_parallel(args, rows, env, began, date) -> str:
    notes = [
        "CPU gloo timings: 2 processes over 127.0.0.1 on the same 2 cores of a shared machine. The point of this "
        "file is correctness (max |diff| from the 1-process latents) and the bytes sent; GPU speed (NCCL, one "
        "device per rank) is unmeasured.",
        "setup: 1x1 = sample() in 1 process, 1 thread; 2x1 sequence-parallel = sample_sequence_parallel, tokens "
        "over 2 processes (Ulysses attention all-to-alls), 1 thread each. speedup = median over rounds of the 1x1 "
        "time / this row's.",
        "full / cached step MiB: bytes rank 0 sends to the other rank in one step (attention all-to-alls of the "
        "units the step runs, and the gather of the hidden state before the final layer); a cached step runs only "
        "the shallow units, and no cached tensor crosses ranks. status exchanges: the 16-byte all-reduces of the "
        "failure channel, one before each collective (not in the MiB).",
        f"one guided request (1 sample, CFG scale 4, model batch 2), DDIM {args.steps} steps, fp32, eager; "
        "Skip-Cache shallow blocks: " + ", ".join(f"{m} {SP_MODELS[m][1]}" for m in SP_MODELS) + ".",
        "models: " + "; ".join(f"{m}: {SP_MODELS[m][0]}" for m in SP_MODELS) + ".",
        f"median, min and max of {args.rounds} rounds, the setups interleaved round by round (each after one "
        f"warm-up run in its processes), rank-0 wall time; whole benchmark {time.perf_counter() - began:.0f} s.",
    ]
    columns = [("model", "model"), ("cache", "Skip-Cache"), ("setup", "processes x threads"), ("median_s", "median s"),
               ("min_s", "min s"), ("max_s", "max s"), ("speedup", "speedup vs 1x1"),
               ("max_abs_diff", "max abs diff vs 1x1"), ("latent_max", "max abs latent"),
               ("full_step_mib", "full step MiB sent"), ("cached_step_mib", "cached step MiB sent"),
               ("status_exchanges", "status exchanges per call")]  # fmt: skip
    stem = report.write_results(f"sequence-parallel-cpu-gloo-{date}", rows, columns, meta=vars(args), notes=notes,
                                env=env, out_dir=args.out, title="Sequence parallelism on CPU gloo, 1 vs 2 processes")  # fmt: skip
    return stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--out", default=report.RESULTS_DIR, help="results directory")
    parser.add_argument("--sequence-parallel", action="store_true", help="the sequence-parallel comparison instead")
    args = parser.parse_args()
    if args.sequence_parallel:
        return sequence_parallel_main(args)
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
        + ", ".join(f"{m} {MODELS[m][1]}" for m in args.models)
        + ").",
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
