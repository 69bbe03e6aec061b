"""The ``skipdit`` command: ``skipdit info | sample | ...`` (``skipdit <command> --help``)."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing configure(parser) and run(args), one-line help)
COMMANDS = {
    "info": ("skipdit_kernels.commands.info", "versions, device and which kernel backends are live"),
    "sample": ("skipdit_kernels.commands.sample", "sample images or latents from a DiT / Skip-DiT checkpoint"),
    "sample-ddp": ("skipdit_kernels.commands.sample_ddp", "sample under torchrun: data parallel to an FID .npz (resumable), or CFG-parallel"),
    "train": ("skipdit_kernels.commands.train", "train a DiT / SkipDiT (or the digit classifier), resumable"),
    "bench": ("skipdit_kernels.commands.bench", "end-to-end sampling benchmark: baseline, ours, Skip-Cache, graphs, fused"),
    "demo": ("skipdit_kernels.commands.demo", "bundled SkipDiT: a 10x10 digit grid with and without Skip-Cache"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipdit", description="Skip-DiT kernels, Skip-Cache and samplers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).configure(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"skipdit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
