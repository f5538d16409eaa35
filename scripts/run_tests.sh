#!/usr/bin/env bash
# Run the linter (ruff, rules in ruff.toml), then the test suite; "no tests collected" (pytest exit 5) counts as a failure, and so does a run that
# changed any file git tracks or left a new one it does not ignore (tests write only to temp folders).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${HERON_VENV:-.venv}
before=""
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  before=$(git status --porcelain)
fi
"$VENV/bin/python" -m ruff check --quiet . || { echo "ruff found problems (ruff.toml): failing" >&2; exit 1; }
# Test files run in parallel on up to 4 cores (pytest-xdist, one file per worker so that module fixtures are
# built once): the suite is CPU-bound, and 2 workers on 2 cores took 7.5 min where one took 14.
workers=$(nproc 2>/dev/null || echo 1); [ "$workers" -gt 4 ] && workers=4
parallel=()
if [ "$workers" -gt 1 ] && "$VENV/bin/python" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
fi
"$VENV/bin/python" -m pytest "${parallel[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  after=$(git status --porcelain)
  if [ "$after" != "$before" ]; then
    echo "the test run changed the checkout (git status before and after differ):" >&2
    diff <(echo "$before") <(echo "$after") >&2
    exit 1
  fi
fi
exit $rc
