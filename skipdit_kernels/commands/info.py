from __future__ import annotations

import importlib.util
import platform


def cpu_description() -> str:
    """The CPU model and the vector instruction set torch dispatches to, e.g. 'AMD EPYC (AVX2)'."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def configure(parser) -> None:
    pass


def run(args) -> int:
    import torch

    import skipdit_kernels
    from skipdit_kernels import ops

    def version(module: str) -> str:
        if importlib.util.find_spec(module) is None:
            return "not installed"
        return getattr(importlib.import_module(module), "__version__", "installed")

    print(f"skipdit-kernels {skipdit_kernels.__version__}")
    print(f"python          {platform.python_version()}")
    print(f"torch           {torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    print(f"triton          {version('triton')}")
    print(f"flash-attn      {version('flash_attn')}")
    print(f"diffusers       {version('diffusers')}")
    print(f"cpu             {cpu_description()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}          {torch.cuda.get_device_name(i)}")
    else:
        print("cuda            no device")
    print(f"backend         {ops.current_backend()} (set with SKIPDIT_BACKEND or ops.use_backend)")
    for name, (ok, why) in ops.backend_status().items():
        print(f"  {name:<7} {'available' if ok else 'missing':<10} {why}")
    from skipdit_kernels.io.environment import current

    print("environment     SKIPDIT_* variables (read at: run time, cli, build, bench, ci)")
    for variable, value in current():
        shown = "unset" if value is None else f"= {value}"
        print(f"  {variable.name:<25} {shown:<9} {variable.read_by:<8} {variable.values}: {variable.meaning}")
    return 0
