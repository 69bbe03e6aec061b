"""The ``skipdit`` command: ``skipdit info | sample | train | bench | demo`` (``skipdit <command> --help``).

Every refused request is one line on stderr, ``skipdit <command>: error: <what and why>``, exit code
2, without a traceback (set SKIPDIT_DEBUG=1 to get the traceback); where the library's message has
more lines (e.g. the key list of a checkpoint that does not fit), the first is printed and
``--verbose`` prints them all. Building the parser imports
neither torch nor the library: each command module configures its options without them and imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from skipdit_kernels.commands._common import CommandError

# name -> (module implementing configure(parser) and run(args), one-line help)
COMMANDS = {
    "info": ("skipdit_kernels.commands.info", "versions, device and which kernel backends are live"),
    "sample": ("skipdit_kernels.commands.sample", "sample images or latents from a DiT / Skip-DiT checkpoint"),
    "sample-ddp": (
        "skipdit_kernels.commands.sample_ddp",
        "sample under torchrun: data parallel to an FID .npz (resumable), or CFG-parallel",
    ),
    "train": ("skipdit_kernels.commands.train", "train a DiT / SkipDiT (or the digit classifier), resumable"),
    "convert": (
        "skipdit_kernels.commands.convert",
        "add Skip-DiT's long skips to a pretrained DiT / Latte (then fine-tune)",
    ),
    "bench": (
        "skipdit_kernels.commands.bench",
        "end-to-end sampling benchmark: baseline, ours, Skip-Cache, graphs, fused",
    ),
    "demo": (
        "skipdit_kernels.commands.demo",
        "bundled SkipDiT: a 10x4 digit grid with and without Skip-Cache (--video: moving digits)",
    ),
}

# What a command may raise for a request it cannot serve: the library's ValueError (CheckpointError
# included) and TypeError for bad arguments, missing files and optional packages, our own refusals.
USER_ERRORS = (CommandError, ValueError, TypeError, OSError, ImportError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skipdit", description="Skip-DiT kernels, Skip-Cache and samplers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).configure(command)
        command.add_argument(
            "--verbose",
            action="store_true",
            help="print refusals in full (e.g. every key of a checkpoint that does not fit)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except USER_ERRORS as exc:
        if os.environ.get("SKIPDIT_DEBUG", "0") not in ("", "0"):
            raise
        lines = (str(exc).strip() or type(exc).__name__).splitlines()
        if len(lines) > 1 and not args.verbose:
            lines = [f"{lines[0].rstrip(':')} ({len(lines) - 1} more lines with --verbose)"]
        print(f"skipdit {args.command}: error: " + "\n".join(lines), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skipdit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
