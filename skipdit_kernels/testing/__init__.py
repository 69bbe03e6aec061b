"""Tools that check and measure the library, shipped with it: ``gpu_check`` (``python -m
skipdit_kernels.testing.gpu_check``: whether every op works on this GPU) and ``report`` (the
interleaved timer, environment record and results writer that the benchmarks of bench/ use too).
Their op tables come from the op specs (``skipdit_kernels.ops.spec``). Imported on demand only."""
