"""Docs that run: every `heron ...` command quoted in README.md, BENCHMARKS.md and the model cards
parses with the real CLI parser (no removed verbs, no unknown flags, values in range)."""
import re
import shlex
from pathlib import Path

import pytest

from heron.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "docs" / "runtime.md", *sorted((ROOT / "models" / "weights").glob("*/MODEL_CARD.md"))]
_ENV = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*")


def quoted_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for inline `heron ...` spans and `heron ...` lines of fenced blocks."""
    out = []
    fence = False
    pending = None
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if fence:
            s = line.split(" #")[0].rstrip()
            if pending is not None:
                pending = (pending[0], pending[1] + " " + s.strip().rstrip("\\"))
                if not s.endswith("\\"):
                    out.append(pending)
                    pending = None
                continue
            s = _ENV.sub("", s.strip().removeprefix("$ "))
            if s.startswith("heron "):
                if s.endswith("\\"):
                    pending = (i, s.rstrip("\\"))
                else:
                    out.append((i, s))
            continue
        for m in re.finditer(r"`((?:[A-Z_][A-Z0-9_]*=\S*\s+)*heron [^`]+)`", line):
            out.append((i, _ENV.sub("", m.group(1))))
    return out


def _all():
    return [(f"{p.relative_to(ROOT)}:{line}", cmd) for p in DOCS for line, cmd in quoted_commands(p.read_text())]


def test_the_docs_quote_commands():
    assert len(_all()) > 30


def _argv(cmd: str) -> list[str]:
    """A quoted command -> argv: pipes, redirections and `&` dropped; usage notation read as the command
    it stands for (`[--opt V]` -> `--opt V`, `a|b` -> `a`)."""
    cmd = re.split(r" \| | > | 2> | &$", cmd.strip())[0]
    cmd = cmd.replace("[", " ").replace("]", " ")
    cmd = re.sub(r"(?<=\S)\|\S+", "", cmd)
    return shlex.split(cmd)[1:]


@pytest.mark.parametrize("where, cmd", _all(), ids=[w for w, _ in _all()])
def test_quoted_command_parses(where, cmd):
    import contextlib
    import io

    argv = _argv(cmd)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        # a mention of a verb by name (`heron kws export`) names a real verb but not its required arguments
        if e.code == 0 or "the following arguments are required" in err.getvalue():
            return
        pytest.fail(f"{where}: `{cmd}` does not parse: {err.getvalue().strip()}")
