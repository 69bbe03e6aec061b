"""The demo's sampling, this checkout against an older one, timed interleaved in one run.

Both checkouts run the same work, the original ``skipdit demo``'s: the bundled SkipDiT samples the
10x10 digit grid (100 labels, CFG 3 so a batch of 200, DDIM-50) once with full compute and once with
Skip-Cache (interval 3, shallow 1). Each round starts one fresh process per checkout (import, load,
warm-up, then the two timed ``sample()`` calls), alternating which goes first; the speedup is the
median of per-round ratios old / new. The old checkout must be built (its ``_C`` extension in place):

    git worktree add --detach /tmp/demo_old a741581
    (cd /tmp/demo_old && SKIPDIT_BUILD_CUDA=0 python setup.py -q build_ext --inplace)
    python bench/ab/demo_ab.py --old /tmp/demo_old [--rounds 5] [--threads 1]

``skipdit demo`` itself now samples three variants over two timing rounds (six ``sample()`` calls
where the original made two), so its total wall time is not the measure; this work is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from report import environment, stats, write_results  # noqa: E402

NEW = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = """
import json, time, torch
torch.set_num_threads({threads})
from skipdit_kernels import SkipCache, sample
from skipdit_kernels.evaluation.bundled import load_bundled
model = load_bundled("skipdit")
labels = torch.arange(10).repeat_interleave(10)
common = dict(steps=50, method="ddim", cfg_scale=3.0, seed=0, progress=False)
sample(model, labels[:2], steps=2, method="ddim", cfg_scale=3.0, progress=False)
out = {{}}
for name, cache in (("full", None), ("cached", SkipCache(interval=3, shallow_blocks=1))):
    started = time.perf_counter()
    images = sample(model, labels, cache=cache, **common)
    out[name] = time.perf_counter() - started
    out[name + "_checksum"] = float(images.double().abs().sum())
print("RESULT " + json.dumps(out))
"""


def run_worker(tree: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", WORKER.format(threads=threads)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker in {tree} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="a built checkout of the older code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(NEW, "bench", "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # so that the results record the workers' thread count
    env = environment()
    old_rev = subprocess.run(
        ["git", "-C", args.old, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    new_rev = subprocess.run(
        ["git", "-C", NEW, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    trees = {"old": args.old, "new": NEW}
    samples = {k: [] for k in trees}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            samples[name].append(run_worker(trees[name], args.threads))
        print(f"round {r + 1}: " + ", ".join(f"{k} full {v[-1]['full']:.2f} s cached {v[-1]['cached']:.2f} s"
                                             for k, v in samples.items()), flush=True)  # fmt: skip
    rows = []
    for work in ("full", "cached", "both"):

        def seconds(name, work=work):
            return [s["full"] + s["cached"] if work == "both" else s[work] for s in samples[name]]

        old, new = stats(seconds("old")), stats(seconds("new"))
        ratios = [o / n for o, n in zip(old["samples_s"], new["samples_s"])]
        rows.append(dict(work=work, old_s=old["median_s"], old_min_s=old["min_s"], old_max_s=old["max_s"],
                         new_s=new["median_s"], new_min_s=new["min_s"], new_max_s=new["max_s"],
                         speedup=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios)))  # fmt: skip
    same = all(abs(o["full_checksum"] - n["full_checksum"]) <= 1e-3 * abs(o["full_checksum"])
               for o, n in zip(samples["old"], samples["new"]))  # fmt: skip
    notes = [
        f"old = {old_rev}, new = {new_rev}; the original demo's work: 100 digits, DDIM-50, CFG 3 (batch 200), "
        f"full compute then Skip-Cache interval 3 shallow 1; {args.threads} thread(s); one fresh process per "
        f"checkout per round, {args.rounds} rounds alternating which goes first; speedup = median of per-round "
        "ratios old / new (min-max).",
        "full-compute images of both checkouts agree (sum |x| within 1e-3)"
        if same
        else "full-compute images of the two checkouts differ beyond 1e-3 in sum |x|: see the JSON",
    ]
    stem = write_results("demo-ab", rows, columns=[
        ("work", "work"), ("old_s", "old s (median)"), ("old_min_s", "min"), ("old_max_s", "max"),
        ("new_s", "new s (median)"), ("new_min_s", "min"), ("new_max_s", "max"), ("speedup", "speedup old/new"),
        ("speedup_min", "min"), ("speedup_max", "max")], meta=dict(samples=samples, old=old_rev, new=new_rev),
        notes=notes, title="skipdit demo's sampling, old vs new code", out_dir=args.out, env=env)  # fmt: skip
    print(open(stem + ".md").read())


if __name__ == "__main__":
    main()
