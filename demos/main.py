"""The README's main job: the shipped model enrolls "hey heron" from text and spots it in audio."""
from __future__ import annotations

import sys

from enroll_from_text import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
