"""What the subcommands share: the CLI's own error, argument types, notices, device and preset checks.

Argument types and ``CommandError`` import nothing heavy (``skipdit --help`` must not load torch);
the checks that need torch import it when they run."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile


class CommandError(Exception):
    """A request the command refuses before doing any work; the CLI prints it as one line, exit code 2."""


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def cache_setting(text: str) -> int | str:
    """A Skip-Cache interval (0 = off) or the preset name 'fast' or 'turbo'."""
    if text in ("fast", "turbo"):
        return text
    try:
        return _int_at_least(text, 0)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an interval >= 0, 'fast' or 'turbo', got {text!r}") from None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def guidance_scale(text: str) -> float:
    """A classifier-free guidance scale: a finite number >= 1 (1 = no guidance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 1.0:
        raise argparse.ArgumentTypeError(
            f"the guidance scale must be a finite number >= 1 (1 = no guidance), got {text}"
        )
    return value


def _probe_writable(folder: str) -> None:
    """Create and remove a file in ``folder``: the check that holds for every user (root included) and
    file system (read-only mounts included). Raises OSError."""
    with tempfile.TemporaryFile(dir=folder, prefix=".skipdit-write-check-"):
        pass


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_output_dir(option: str, path: str) -> None:
    """Before any work: ``path`` (the value of ``option``) is a folder this process can write in,
    created with its parents if missing. Raises CommandError naming the option."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{option} {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        _probe_writable(path)
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write there ({_reason(exc)})") from None


def check_output_file(option: str, path: str) -> None:
    """Before any work: ``path`` (the value of ``option``) can be written as a file: its folder
    exists and is writable, and the path is not a folder or a read-only file. Raises CommandError
    naming the option."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CommandError(f"{option} {path}: folder {folder} does not exist")
    try:
        _probe_writable(folder)
        if os.path.exists(path):
            with open(path, "ab"):
                pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write there ({_reason(exc)})") from None


def check_input_file(option: str, path: str, what: str) -> None:
    """Before any work: ``path`` (the value of ``option``) is an existing file (``what`` names the
    kind expected, e.g. "a checkpoint file"). Raises CommandError naming the option."""
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a folder, not {what}")
    if not os.path.isfile(path):
        raise CommandError(f"{option} {path}: no such file (expected {what})")


def notice(command: str, text: str) -> None:
    """One line on stderr for something the user should know but that is not an error."""
    print(f"skipdit {command}: note: {text}", file=sys.stderr)


def available_devices() -> list[str]:
    """The devices torch can use here: "cpu", then "cuda", "cuda:0", ... and "mps" when present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str | None):
    """``--device`` as a torch.device that exists here (default: cuda when available, else cpu).
    Raises CommandError naming the available devices."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {spec!r} is not a device name; available here: {', '.join(available)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise CommandError(f"--device {spec}: {why}; available here: {', '.join(available)}")
    if str(device) not in available and device.type != "cpu":
        raise CommandError(f"--device {spec}: not available here; available here: {', '.join(available)}")
    return device


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_cache_options(parser) -> None:
    """--cache, --forecast, --shallow: the Skip-Cache options of the sampling commands."""
    parser.add_argument(
        "--cache",
        type=cache_setting,
        default=0,
        help="Skip-Cache interval (0 = off), or 'fast': the quality-matched preset (forecast at "
        "interval 4 after full steps while t >= 950 for DDIM; the paper's reuse at interval 2 for DDPM), or 'turbo' "
        "(interval 10, forecast for DDIM / reuse for DDPM: FLOP bound 3x on the bundled models)",
    )
    parser.add_argument(
        "--forecast",
        default="0",
        choices=["0", "1", "2", "3", "auto"],
        help="Skip-Cache forecast order (0 = reuse; auto = best for the sampler)",
    )
    parser.add_argument(
        "--shallow", type=positive_int, default=None, help="Skip-Cache shallow blocks (default 4, or depth/2)"
    )


def cache_from_args(args, model):
    """What ``sample(cache=...)`` takes for the options of ``add_cache_options``."""
    from skipdit_kernels import SkipCache

    if args.cache in ("fast", "turbo") or not args.cache:
        return args.cache or None
    shallow = args.shallow or min(4, model.depth // 2)
    forecast = args.forecast if args.forecast == "auto" else int(args.forecast)
    return SkipCache(interval=args.cache, shallow_blocks=shallow, forecast=forecast)


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPE_NAMES[name])
