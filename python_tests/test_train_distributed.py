"""DDP training under torchrun (gloo, CPU): 1 and 2 processes follow the same trajectory, a 2-process
checkpoint resumes on 1 process, a rank that raises stops every rank within seconds. Tiny models,
bounded subprocesses."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from skipdit_kernels.training.loop import build_model, train

    out, steps, fail_rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fsdp = len(sys.argv) > 4 and sys.argv[4] == "fsdp"
    torch.manual_seed(0)
    model = build_model("skipdit", input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                        num_classes=3, class_dropout_prob=0.2)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (40,), generator=g))
    if int(os.environ.get("RANK", "0")) == fail_rank:
        forward = model.forward
        calls = []

        def failing(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("rank %d: injected failure" % fail_rank)
            return forward(*a, **k)

        model.forward = failing
    r = train(model, data, steps=steps, batch_size=8, lr=1e-3, seed=5, out_dir=out, save_every=5, log_every=1,
              progress=False, threads=1, accumulation=2, fsdp=fsdp)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out, "losses-%d.json" % r.step), "w") as f:
            json.dump(r.losses, f)
""")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}


def run(tmp_path, out, steps, nproc, fail_rank=-1, extra=(), timeout=240):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--monitor-interval=0.5",
        str(script),
        str(out),
        str(steps),
        str(fail_rank),
        *extra,
    ]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def losses(out, step):
    return torch.tensor(json.load(open(out / f"losses-{step}.json")), dtype=torch.float64)


def weights(out):
    return torch.load(out / "train_state.pt", weights_only=True)["model"]


def test_one_and_two_processes_follow_the_same_trajectory_and_resume_across_world_sizes(tmp_path):
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    for out, nproc in ((one, 1), (two, 2)):
        p = run(tmp_path, out, 20, nproc)
        assert p.returncode == 0, p.stderr[-3000:]
    torch.testing.assert_close(losses(two, 20), losses(one, 20), rtol=1e-5, atol=0)
    for k, v in weights(one).items():
        torch.testing.assert_close(weights(two)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    rows = [json.loads(line) for line in open(two / "log.jsonl")]
    assert len(rows) == 20 and all(r["world_size"] == 2 for r in rows)
    # 2 processes for 10 steps, then 1 process from that checkpoint to 20
    p = run(tmp_path, mixed, 10, 2)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(tmp_path, mixed, 20, 1)
    assert p.returncode == 0, p.stderr[-3000:]
    torch.testing.assert_close(torch.cat([losses(mixed, 10), losses(mixed, 20)]), losses(one, 20), rtol=1e-5, atol=0)
    assert [json.loads(line)["world_size"] for line in open(mixed / "log.jsonl")] == [2] * 10 + [1] * 10


def test_a_failing_rank_stops_every_rank_within_seconds(tmp_path):
    started = time.monotonic()
    p = run(tmp_path, tmp_path / "fail", 20, 2, fail_rank=1, timeout=120)
    elapsed = time.monotonic() - started
    assert p.returncode != 0
    assert "rank 1: injected failure" in p.stderr
    assert not (tmp_path / "fail" / "losses-20.json").exists()
    assert elapsed < 60, elapsed  # start-up included; without the teardown rank 0 waits 30 min in the all-reduce


def test_fsdp_on_gloo_follows_the_same_trajectory_and_resumes(tmp_path):
    pytest.importorskip("torch.distributed.fsdp").fully_shard  # FSDP2 (torch >= 2.6)
    one, sharded = tmp_path / "one", tmp_path / "fsdp"
    p = run(tmp_path, one, 12, 1)
    assert p.returncode == 0, p.stderr[-3000:]
    for steps in (6, 12):  # 6 steps, then resumed (the optimizer state goes back into the shards)
        p = run(tmp_path, sharded, steps, 2, extra=("fsdp",))
        assert p.returncode == 0, p.stderr[-3000:]
    torch.testing.assert_close(torch.cat([losses(sharded, 6), losses(sharded, 12)]), losses(one, 12), rtol=1e-5, atol=0)
    for k, v in weights(one).items():
        torch.testing.assert_close(weights(sharded)[k], v, rtol=1e-5, atol=1e-6, msg=k)
