"""The benchmarks' interleaved timer, environment record, device tag and results writer: the package's
``skipdit_kernels.testing.report`` (which ``skipdit_kernels.testing.gpu_check`` writes with too),
importable as ``report`` by the scripts of bench/'s subfolders (each puts this folder on ``sys.path``).

    import report
    env = report.environment()
    t = report.time_fns({"eager": f, "native": g})
    report.write_results("ops", rows, columns=[("op", "op"), ("eager_ms", "eager ms")], env=env)
"""

from skipdit_kernels.testing.report import *  # noqa: F401,F403
