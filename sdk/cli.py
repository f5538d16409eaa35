"""The `heron` command: one entry point, verbs registered by the modules that implement them.

Each verb module exposes `register(subparsers)`; heavy imports happen inside the handlers, so
`heron --help` and `heron doctor` start fast and need no torch.
"""
from __future__ import annotations

import argparse
import re
import sys

from heron import __version__
from heron.lm import MAX_ROE_SAMPLES, MAX_THREADS
from heron.runtime.manifest import HeadCheck


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default; an option whose default is None says in its help what None means (a help
    that already states its default, "default: ..." or "(default ...", is left as it is)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or re.search(r"default[:\s]", action.help or ""):
            return action.help
        return super()._get_help_string(action)


# Numeric options, checked at parse time: (low, high, low excluded). Integers not named here are counts
# (>= 1); floats not named here are finite and >= 0.
_INT_RANGES = {"seed": (0, 2**63 - 1, False), "limit": (0, 10**9, False), "gate_warmup": (0, 10**9, False),
               "exit_layer": (0, 1024, False), "layer": (0, 1024, False), "eval_every": (0, 10**9, False),
               "warmup": (0, 10**9, False), "grow_layers": (0, 64, False), "confusables": (0, 1000, False),
               "roe_samples": (1, MAX_ROE_SAMPLES, False), "threads": (1, MAX_THREADS, False),
               "draft_threads": (1, MAX_THREADS, False), "tts": (0, 10**7, False),  # --tts 0: none
               "kappa": (0, 1024, False),  # --kappa 0: Mirror-SD without early-exit candidates
               "head_rank": (0, 10**6, False),  # --head-rank 0: the 8-bit head scores every word
               "offset_levels": (0, 4, False)}  # --offset-levels 0: Q4_1's offsets as an exact fp32 term
_FLOAT_RANGES = {"hold_out_fraction": (0.0, 0.9, False), "sensitivity": (0.0, 1.0, False),
                 "threshold": (0.0, 1.0, True), "top_p": (0.0, 1.0, True), "anchor_frac": (0.0, 1.0, False),
                 "anchor_prob": (0.0, 1.0, False), "lr": (0.0, 10.0, True), "tolerance": (0.0, 100.0, True),
                 "minutes": (0.0, 10**6, True), "stream_minutes": (0.0, 10**6, True), "rate": (0.0, 10**4, True),
                 "max_minutes": (0.0, 10**7, True), "seconds": (0.0, 10**7, True),
                 "real_fraction": (0.0, 1.0, False), "teacher_weight": (0.0, 100.0, False),
                 "min_kept": (0.5, 1.0, False), "device_speech": (0.0, 1.0, False),
                 # heron kws add-head: the manifest's own ranges (heron.runtime.manifest.HeadCheck)
                 **{k: (lo, hi, False) for k, (lo, hi) in HeadCheck.RANGES.items()},
                 "before": (*HeadCheck.RANGES["before_s"], False)}


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (the message and where to look), not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{_did_you_mean(self, message)} (see {self.prog} --help)\n")


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """"; did you mean --sensitivity?" for a mistyped option or a verb with a close match, else ""."""
    import difflib
    if message.startswith("unrecognized arguments: "):  # reported by the top parser: find the verb's own
        words = [w.split("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("--")]
        for token in getattr(parser, "argv", sys.argv[1:]):
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subs and token in subs[0].choices:
                parser = subs[0].choices[token]
        known = sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))
    elif m := re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message):
        words, known = [m.group(1)], re.findall(r"'?([\w.-]+)'?", m.group(2))
    else:
        return ""
    hints = [c[0] for w in words if (c := difflib.get_close_matches(w, known, n=1, cutoff=0.75)) and c[0] != w]
    return f"; did you mean {' / '.join(hints)}?" if hints else ""


def _checked(kind, dest: str):
    lo, hi, open_lo = (_INT_RANGES.get(dest, (1, 10**9, False)) if kind is int
                       else _FLOAT_RANGES.get(dest, (0.0, 1e9, False)))

    def parse(text: str):
        import math
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if (kind is float and not math.isfinite(v)) or v < lo or v > hi or (open_lo and v == lo):
            rng = (f"{'>' if open_lo else '>='} {lo}" if hi >= 1e6 else f"in {'(' if open_lo else '['}{lo}, {hi}]")
            raise argparse.ArgumentTypeError(f"must be {'a finite number ' if kind is float else ''}{rng}, got {text!r}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _check_numbers(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.type in (int, float):
            action.type = _checked(action.type, action.dest)
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _check_numbers(sub)


def build_parser() -> argparse.ArgumentParser:
    from heron import cli_data, cli_kws, cli_lm, doctor

    parser = _Parser(prog="heron", formatter_class=_Formatter,
                                     description="heron: on-device speech SDK (keyword spotting from text, "
                                                 "small MoE language models, mobile export)")
    parser.add_argument("--version", action="version", version=f"heron {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in (doctor, cli_kws, cli_lm, cli_data):  # noun first: heron kws|lm|data VERB
        module.register(sub, _Formatter)
    _check_numbers(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.argv = list(sys.argv[1:] if argv is None else argv)  # for typo suggestions (_did_you_mean)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from heron.paths import check_out

        check_out(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the user; HERON_DEBUG=1 shows the traceback
        import os
        if os.environ.get("HERON_DEBUG"):
            raise
        known = isinstance(e, (ValueError, OSError, RuntimeError, ImportError))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"heron {args.verb}: error: {msg}" + ("" if known else f" ({type(e).__name__}; "
              "HERON_DEBUG=1 shows the traceback)"), file=sys.stderr)
        return 1
