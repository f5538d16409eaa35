"""The README's main job. Until the keyword model lands: synthesize a keyword in several voices."""
from __future__ import annotations

import sys

from heron.cli import main

if __name__ == "__main__":
    keyword = sys.argv[1] if len(sys.argv) > 1 else "hey heron"
    raise SystemExit(main(["data", "synth", "--text", keyword, "--voices", "8", "--out", "out/demo_synth"]))
