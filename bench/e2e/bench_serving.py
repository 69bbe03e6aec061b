"""Serving throughput: a stream of requests arriving at staggered times, served three ways.

    nice -n 10 env OMP_NUM_THREADS=1 python bench/e2e/bench_serving.py            # 16 requests, 3 rounds

The bundled SkipDiT (16x16 latent, 8 blocks), DDIM-50, one sample per request, class label i % 10,
guidance scale 1.5 on even requests and none on odd ones (one call class: CFG rows and plain rows
share the model call), Skip-Cache cycling through interval 2, 3, 4 (reuse, shallow 1) and "fast"
(forecast 1 at interval 4). Strategies:
  (a) one request at a time: ``sample()`` per request, first come first served;
  (b) static batches that wait to fill: B requests (or the rest) are admitted together once the
      B-th has arrived and run to completion before the next batch (``BatchedSampler``, no joins);
  (c) batched requests at different steps: every step admits the requests that have arrived
      (``BatchedSampler``, joins between steps, no cap).
Clock: arrivals are simulated (request i at i * gap, gap = --gap times one request's compute time
measured first); the compute is real, and the clock advances by the CPU time of this thread over
each compute call (``time.thread_time``; one torch thread), so time spent descheduled on a shared
machine counts for no strategy. Throughput: requests / (last finish - first arrival); latency:
finish - arrival per request. Rounds interleave the strategies; medians over rounds are reported,
with the per-round throughput ratio (c)/(b).
Deep-unit rows: per step, the rows the deep units ran on (counted by ``BatchedSampler``; for (a) a
full step's rows) against the rows whose step is full: equal when the deep units run on full rows only.
Results: bench/results/serving-<device tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import environment, markdown_table, write_results  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.sampling.batched import BatchedSampler  # noqa: E402

SCHEDULES = [sk.SkipCache(interval=2, shallow_blocks=1), sk.SkipCache(interval=3, shallow_blocks=1),
             sk.SkipCache(interval=4, shallow_blocks=1), "fast"]  # fmt: skip


def make_requests(n: int, steps: int) -> list[dict]:
    return [dict(conditioning=[i % 10], steps=steps, method="ddim", cfg_scale=1.5 if i % 2 == 0 else 1.0,
                 cache=SCHEDULES[i % len(SCHEDULES)], seed=i) for i in range(n)]  # fmt: skip


class Clock:
    """Simulated seconds: jumps to arrivals, advances by the thread CPU time of compute."""

    def __init__(self):
        self.now = 0.0

    def wait_until(self, t: float) -> None:
        self.now = max(self.now, t)

    def compute(self, fn):
        start = time.thread_time()
        out = fn()
        self.now += time.thread_time() - start
        return out


def one_at_a_time(model, requests, arrivals):
    clock, finish, latents, deep, full, steps = Clock(), {}, {}, 0, 0, 0
    for i, r in enumerate(requests):
        clock.wait_until(arrivals[i])
        r = dict(r)
        labels = r.pop("conditioning")
        x, info = clock.compute(lambda: sk.sample(model, labels, progress=False, return_info=True, **r))
        finish[i], latents[i] = clock.now, x
        rows = 2 if r["cfg_scale"] > 1 else 1
        deep += info.full_steps * rows  # sample() runs the deep units on every row of a full step
        full += info.full_steps * rows
        steps += info.steps
    return finish, latents, dict(deep_rows=deep, full_rows=full, model_calls=steps)


def batched(model, requests, arrivals, batch: int | None):
    """``batch``: static batches of that size; None: continuous (join at every step)."""
    clock, finish, latents = Clock(), {}, {}
    sampler, ids, nxt = BatchedSampler(model), {}, 0
    deep = full = calls = 0
    n = len(requests)
    while nxt < n or len(sampler):
        if not len(sampler):
            if batch is None:
                clock.wait_until(arrivals[nxt])
            else:
                clock.wait_until(arrivals[min(nxt + batch, n) - 1])  # wait for the batch to fill
        admit = []
        while nxt < n and arrivals[nxt] <= clock.now and (batch is None or not len(sampler) and len(admit) < batch):
            admit.append(nxt)
            nxt += 1
        report = clock.compute(
            lambda: ([ids.__setitem__(sampler.add(**requests[i]), i) for i in admit], sampler.step())[1]
        )
        if report.deep_rows != report.full_rows:
            raise AssertionError(f"deep units ran on {report.deep_rows} rows, {report.full_rows} full")
        deep, full, calls = deep + report.deep_rows, full + report.full_rows, calls + report.calls
        for f in report.finished:
            finish[ids[f.request_id]], latents[ids[f.request_id]] = clock.now, f.latents
    return finish, latents, dict(deep_rows=deep, full_rows=full, model_calls=calls)


def measure(finish: dict, arrivals: list[float]) -> dict:
    lat = sorted(finish[i] - arrivals[i] for i in finish)
    span = max(finish.values()) - min(arrivals)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    return dict(rps=len(lat) / span, median_s=statistics.median(lat), p95_s=p95, span_s=span)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--gap", type=float, default=0.25, help="arrival gap as a fraction of one request's compute time")
    p.add_argument("--batch", type=int, nargs="+", default=[4, 8], help="static batch sizes for (b)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="serving")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = environment("cpu")
    model = load_bundled("skipdit").eval()
    requests = make_requests(args.requests, args.steps)
    for _ in range(3):  # warm-up; the last one's compute time (one request alone) sets the arrival gap
        clock = Clock()
        clock.compute(lambda: batched(model, requests[:1], [0.0], None))
    one = clock.now
    arrivals = [i * args.gap * one for i in range(args.requests)]
    strategies = {"(a) one at a time": lambda: one_at_a_time(model, requests, arrivals)}
    strategies.update(
        {f"(b) static batch {b}": (lambda b=b: batched(model, requests, arrivals, b)) for b in args.batch}
    )
    strategies["(c) different steps"] = lambda: batched(model, requests, arrivals, None)
    per_round: dict[str, list[dict]] = {k: [] for k in strategies}
    counts, reference, max_diff = {}, None, 0.0
    for rnd in range(args.rounds):
        for name, fn in strategies.items():
            finish, latents, count = fn()
            per_round[name].append(measure(finish, arrivals))
            counts[name] = count
            if reference is None:
                reference = latents
            max_diff = max(max_diff, max(float((latents[i] - reference[i]).abs().max()) for i in latents))
            print(f"round {rnd} {name}: {per_round[name][-1]}", flush=True)
    best_static = max(
        (k for k in strategies if k.startswith("(b)")), key=lambda k: statistics.median(m["rps"] for m in per_round[k])
    )
    cont = "(c) different steps"
    ratios = [c["rps"] / b["rps"] for c, b in zip(per_round[cont], per_round[best_static])]
    rows = []
    for name, ms in per_round.items():
        total_steps = args.requests * args.steps
        rows.append(dict(
            strategy=name, rps=statistics.median(m["rps"] for m in ms),
            median_latency_s=statistics.median(m["median_s"] for m in ms),
            p95_latency_s=statistics.median(m["p95_s"] for m in ms),
            model_calls=counts[name]["model_calls"],
            deep_rows_per_call=counts[name]["deep_rows"] / counts[name]["model_calls"],
            full_rows_per_call=counts[name]["full_rows"] / counts[name]["model_calls"],
            deep_rows_of_all_steps=counts[name]["deep_rows"] / sum(2 if r["cfg_scale"] > 1 else 1 for r in requests) / args.steps,
            request_steps=total_steps,
        ))  # fmt: skip
    c_row = next(r for r in rows if r["strategy"] == cont)
    b_row = next(r for r in rows if r["strategy"] == best_static)
    verdict = (
        f"(c) / best static ({best_static}) throughput: median {statistics.median(ratios):.2f}x over "
        f"{len(ratios)} rounds (min {min(ratios):.2f}, max {max(ratios):.2f}); p95 latency "
        f"{c_row['p95_latency_s']:.2f} s vs {b_row['p95_latency_s']:.2f} s. Target >= 1.3x at equal or lower p95: "
        + (
            "met"
            if statistics.median(ratios) >= 1.3 and c_row["p95_latency_s"] <= b_row["p95_latency_s"]
            else "NOT met"
        )
    )
    notes = [
        f"{args.requests} requests, bundled SkipDiT, DDIM-{args.steps}, one sample each, CFG 1.5 on even requests, "
        "Skip-Cache cycling interval 2/3/4 (shallow 1, reuse) and 'fast'.",
        f"Arrivals every {args.gap} x one request's compute ({one:.2f} s CPU alone) = {args.gap * one:.3f} s (simulated clock; "
        "compute real, counted as this thread's CPU time, 1 torch thread, niced).",
        f"Rounds: {args.rounds}, strategies interleaved per round; medians over rounds.",
        "deep rows per call = rows the deep units ran on per model call, counted; it equals the full rows per call "
        "(checked at every step: the deep units run on the full rows only).",
        f"Every strategy's latents equal (a)'s within {max_diff:.2e} (max abs difference over all requests and rounds).",
        verdict,
    ]
    cols = [("strategy", "strategy"), ("rps", "requests/s"), ("median_latency_s", "median latency s"),
            ("p95_latency_s", "p95 latency s"), ("model_calls", "model calls"),
            ("deep_rows_per_call", "deep rows / call"), ("full_rows_per_call", "full rows / call"),
            ("deep_rows_of_all_steps", "deep rows / all rows")]  # fmt: skip
    stem = write_results(
        args.name,
        rows,
        cols,
        meta=dict(vars(args), one_request_s=one, ratios=ratios),
        notes=notes,
        env=env,
        title="Serving: requests at different steps vs static batches vs one at a time",
    )
    print(markdown_table(rows, cols))
    print("\n".join(notes))
    print(stem)


if __name__ == "__main__":
    main()
