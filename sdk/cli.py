"""The `heron` command: one entry point, verbs registered by the modules that implement them.

Each verb module exposes `register(subparsers)`; heavy imports happen inside the handlers, so
`heron --help` and `heron doctor` start fast and need no torch.
"""
from __future__ import annotations

import argparse
import sys

from heron import __version__


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from heron import cli_bench, cli_data, cli_export, cli_kws, cli_lm, cli_train, doctor, listen

    parser = argparse.ArgumentParser(prog="heron", formatter_class=_Formatter,
                                     description="heron: on-device speech SDK (keyword spotting from text, "
                                                 "small MoE language models, mobile export)")
    parser.add_argument("--version", action="version", version=f"heron {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in (doctor, cli_data, cli_kws, listen, cli_train, cli_lm, cli_export, cli_bench):
        module.register(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"heron {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
