"""Cost of a Forecast Skip-Cache step on CPU (target: a cached step with forecast=1 costs
<= 1.03x a cached step with reuse; 2 threads, batch 4). Also the per-step full/cached times that
give the trajectory speedup of each interval (the fidelity report's "measured speedup").

Two copies of one model, one per cache, step through the same trajectory in lockstep (interleaved,
so load on a shared machine hits both alike); each forward is timed and binned full / cached; the
ratio of medians is reported, with min-max, the CPU and the load average at start and end.

    python bench/quality/forecast_cost.py [--ckpt /tmp/skipdit_forecast_model.pt] [--batch 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402


def model_from(args):
    try:
        from skipdit_kernels.evaluation import bundled  # type: ignore

        return bundled.load_bundled("skipdit"), "bundled SkipDiT"
    except Exception:  # noqa: BLE001
        model = sk.SkipDiT(input_size=16, patch_size=args.patch, in_channels=1, hidden_size=128, depth=8,
                           num_heads=4, num_classes=10, learn_sigma=False)  # fmt: skip
        try:
            model.load_state_dict(torch.load(args.ckpt, weights_only=True))
            desc = f"self-trained SkipDiT ({args.ckpt})"
        except FileNotFoundError:
            desc = "random-init SkipDiT (timing only)"
        return model.eval(), desc


def measure(model, orders, batch, interval, shallow, rounds):
    models = {o: copy.deepcopy(model) for o in orders}
    requests = {o: sk.enable_skip_cache(models[o], sk.SkipCache(interval=interval, shallow_blocks=shallow, forecast=o))
                for o in orders}  # fmt: skip
    times = {o: {True: [], False: []} for o in orders}
    g = torch.Generator().manual_seed(0)
    y = torch.arange(batch) % model.num_classes
    with torch.no_grad():
        for r in range(rounds):
            for t in range(980, 39, -20):  # stop_t (20) would reset the state
                x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
                tt = torch.full((batch,), t)
                for o in orders if (t // 20) % 2 else orders[::-1]:
                    m = models[o]
                    start = time.perf_counter()
                    m(x, tt, y)
                    elapsed = time.perf_counter() - start
                    if r > 0 or t < 900:  # warm-up
                        times[o][requests[o].last_step_full].append(elapsed)
    for request in requests.values():
        request.close()
    return {o: {("full" if k else "cached"): report.stats(v) for k, v in d.items() if v} for o, d in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="/tmp/skipdit_forecast_model.pt")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--batch", type=int, nargs="+", default=[4, 64])
    p.add_argument("--shallow", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = report.environment()
    model, desc = model_from(args)
    print(f"{desc}, {env['name']}, {args.threads} threads, shallow_blocks {args.shallow}")
    out = {}
    ms = lambda s: f"{s['median_s'] * 1e3:.3f} ms ({s['min_s'] * 1e3:.2f}-{s['max_s'] * 1e3:.2f})"  # noqa: E731
    for batch in args.batch:
        res = measure(model, [0, 1, 2], batch, 2, args.shallow, args.rounds)
        out[batch] = {
            o: {k: {n: v for n, v in s.items() if n != "samples_s"} for k, s in r.items()} for o, r in res.items()
        }
        reuse = res[0]["cached"]["median_s"]
        print(f"batch {batch}: full {ms(res[0]['full'])}, cached reuse {ms(res[0]['cached'])}, "
              f"forecast 1 {ms(res[1]['cached'])} (x{res[1]['cached']['median_s'] / reuse:.3f}), "
              f"forecast 2 {ms(res[2]['cached'])} (x{res[2]['cached']['median_s'] / reuse:.3f}); "
              f"cached/full {reuse / res[0]['full']['median_s']:.3f}")  # fmt: skip
    env["load_average_end"] = report.load_average()
    print(report.load_line(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=desc, environment=env, threads=args.threads, results=out), f, indent=1)


if __name__ == "__main__":
    main()
