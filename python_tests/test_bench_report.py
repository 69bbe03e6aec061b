"""skipdit_kernels.testing.report: the one interleaved timer, environment record and results writer of
bench/ (bench/report.py re-exports it) and of gpu_check."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from skipdit_kernels.testing import report as _report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    return _report


def test_bench_scripts_import_the_package_module_as_report():
    code = (
        "import sys; sys.path.insert(0, 'bench'); import report; from skipdit_kernels.testing import report as r; "
        "assert report.time_fns is r.time_fns and report.RESULTS_DIR == r.RESULTS_DIR; print(r.RESULTS_DIR)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == os.path.join(REPO, "bench", "results")


def test_time_fns_interleaves_round_by_round(report):
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    out = report.time_fns(fns, budget_s=0.0, min_rounds=4, warmup=1, pause_s=0)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 4  # warm-up, then 4 rounds of every variant in turn
    for v in out.values():
        assert v["rounds"] == 4 and len(v["samples_s"]) == 4
        assert v["min_s"] <= v["median_s"] <= v["max_s"]


def test_time_fns_sizes_the_rounds_from_the_budget(report):
    import time

    out = report.time_fns(
        {"a": lambda: time.sleep(0.01), "b": lambda: time.sleep(0.01)},
        budget_s=0.1,
        min_rounds=1,
        max_rounds=100,
        warmup=0,
        pause_s=0,
    )
    assert 2 <= out["a"]["rounds"] == out["b"]["rounds"] <= 5  # about 0.1 s of calls at 0.02 s a round


def test_time_fns_reports_a_failing_variant_and_keeps_timing_the_others(report):
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] > 2:  # passes warm-up, fails in the second timed round
            raise RuntimeError("backend lost\nsecond line")

    def broken():
        raise ValueError("no kernel for this dtype")

    out = report.time_fns(
        {"ok": lambda: None, "flaky": flaky, "broken": broken}, budget_s=0.0, min_rounds=3, warmup=1, pause_s=0
    )
    assert list(out) == ["ok", "flaky", "broken"]
    assert out["ok"]["rounds"] == 3
    assert out["flaky"] == {"error": "RuntimeError: backend lost"}
    assert out["broken"] == {"error": "ValueError: no kernel for this dtype"}


def test_round_ratio_is_the_median_of_per_round_ratios(report):
    timing = {"base": {"samples_s": [2.0, 4.0, 9.0]}, "fast": {"samples_s": [1.0, 1.0, 3.0]}}
    r = report.round_ratio(timing, "fast", "base")
    assert r == {"ratio": 3.0, "min": 2.0, "max": 4.0, "rounds": 3}


def test_environment_records_cpu_threads_and_load(report):
    env = report.environment()
    for key in (
        "cpu",
        "torch_cpu_capability",
        "native_cpu_capability",
        "threads",
        "cores",
        "load_average",
        "torch",
        "date",
        "name",
    ):
        assert key in env
    assert len(env["load_average"]) == 3
    assert report.device_tag() == report.device_tag("cpu") and " " not in report.device_tag()


@pytest.mark.parametrize(
    "start, end, quiet",
    [([0.4, 0, 0], [0.9, 0, 0], True), ([0.4, 0, 0], [1.2, 0, 0], False), ([3.0, 0, 0], [0.1, 0, 0], False)],
)
def test_quiet_is_judged_per_core_at_start_and_end(report, start, end, quiet):
    env = {"cores": 2, "load_average": start, "load_average_end": end}
    assert report.quiet(env) is quiet
    assert ("numbers taken under load" in report.load_line(env)) is not quiet


def test_write_results_states_the_load_and_marks_a_loaded_machine(report, tmp_path, monkeypatch):
    env = report.environment()
    env.update(load_average=[5.0, 4.0, 3.0], cores=2)
    monkeypatch.setattr(report, "load_average", lambda: [0.2, 0.3, 0.4])
    stem = report.write_results(
        "unit",
        [{"op": "x", "ms": 1.5}],
        [("op", "op"), ("ms", "ms")],
        meta={"k": 1},
        notes=["a note"],
        out_dir=str(tmp_path),
        title="Unit",
        env=env,
    )
    assert os.path.basename(stem) == f"unit-{report.device_tag()}"
    data = json.load(open(stem + ".json"))
    assert data["environment"]["load_average"] == [5.0, 4.0, 3.0]
    assert data["environment"]["load_average_end"] == [0.2, 0.3, 0.4]
    assert data["meta"] == {"k": 1} and data["rows"] == [{"op": "x", "ms": 1.5}]
    md = open(stem + ".md").read()
    assert md.startswith(f"# Unit on {env['name']}\n")
    assert "5.00/4.00/3.00 at start, 0.20/0.30/0.40 at end, on 2 cores: **numbers taken under load**" in md
    assert "- a note" in md and "| x | 1.5 |" in md


def test_write_results_takes_the_heading_of_a_body(report, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "load_average", lambda: [0.9, 0.3, 0.4])
    env = report.environment()
    env.update(load_average=[0.1, 0.1, 0.1], cores=2)
    stem = report.write_results("unit", env=env, body="# My bench on this CPU\n\n| a |\n", out_dir=str(tmp_path))
    md = open(stem + ".md").read()
    assert md.splitlines()[0] == "# My bench on this CPU"
    assert "quiet (1-min load <= 0.5 per core)" in md and md.count("# ") == 1


@pytest.mark.parametrize(
    "argv, forwarded",
    [
        (
            ["bench", "--rounds", "3", "--e2e-rounds", "2", "--models", "DiT-S/2"],
            ["--rounds", "3", "--e2e-rounds", "2", "--models", "DiT-S/2"],
        ),
        (["bench", "--", "--help"], ["--help"]),
        (["bench"], []),
    ],
)
def test_skipdit_bench_forwards_its_arguments(monkeypatch, argv, forwarded):
    from skipdit_kernels import cli
    from skipdit_kernels.commands import bench

    seen = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd: seen.append(cmd) or argparse.Namespace(returncode=0))
    assert cli.main(argv) == 0
    assert seen == [[sys.executable, bench.BENCH_FILE, *forwarded]]
    assert os.path.isfile(bench.BENCH_FILE)


def test_skipdit_bench_outside_a_source_checkout_says_so(monkeypatch, capsys):
    from skipdit_kernels import cli
    from skipdit_kernels.commands import bench

    monkeypatch.setattr(bench, "BENCH_FILE", "/nonexistent/bench/e2e/bench_sampling.py")
    assert cli.main(["bench", "--rounds", "1"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_readme_performance_section_is_generated_from_the_results():
    """The README's performance section is what bench/readme_performance.py makes of bench/results."""
    script = os.path.join(REPO, "bench", "readme_performance.py")
    proc = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
