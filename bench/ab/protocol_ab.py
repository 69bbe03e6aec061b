"""A/B of two source trees' sampling speed per step, each in fresh processes, old and new alternated
round by round (ABBA): python bench/ab/protocol_ab.py ROUNDS [OLD NEW], the trees' roots (default
/tmp/ab/old and /tmp/ab/new). Prints median, min and max seconds per step, the new/old ratio, the CPU and the load
average at start and end."""

import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

env = report.environment()
code = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import skipdit_kernels as sk
torch.set_num_threads(1)
torch.manual_seed(0)
which = sys.argv[2]
if which == "dits":
    m = sk.SkipDiT.from_preset("DiT-S/2", input_size=16, num_classes=10)
    kw = dict(steps=20, method="ddim", cfg_scale=4.0, cache=sk.SkipCache(interval=2, shallow_blocks=2), progress=False)
    labels = [1, 2]
else:
    m = sk.SkipDiT(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    kw = dict(steps=100, method="ddim", cfg_scale=4.0, cache=sk.SkipCache(interval=2, shallow_blocks=1), progress=False)
    labels = [1]
sk.sample(m, labels, **{**kw, "steps": 4})
t = time.perf_counter(); sk.sample(m, labels, **kw); print((time.perf_counter() - t) / kw["steps"])
"""
res = {}
trees = dict(zip(("old", "new"), sys.argv[2:4] or ("/tmp/ab/old", "/tmp/ab/new")))
for r in range(int(sys.argv[1])):
    for which in ("dits", "tiny"):
        for v in ("old", "new") if r % 2 else ("new", "old"):
            out = subprocess.run(
                [sys.executable, "-c", code, os.path.abspath(trees[v]), which],
                capture_output=True,
                text=True,
                cwd="/tmp",
            )
            res.setdefault((which, v), []).append(float(out.stdout.strip().splitlines()[-1]))
for (which, v), xs in sorted(res.items()):
    print(which, v, "median s/step %.5f" % statistics.median(xs), "min %.5f max %.5f" % (min(xs), max(xs)))
for which in ("dits", "tiny"):
    print(which, "new/old", statistics.median(res[(which, "new")]) / statistics.median(res[(which, "old")]))
env["load_average_end"] = report.load_average()
print(env["name"], f"{env['threads']} threads;", report.load_line(env))
