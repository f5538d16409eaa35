"""A/B of onnxruntime's exact int8 option on this CPU: encoder RTF (best of 3 over 60 s of real speech,
1 thread) and an output checksum, with session.x64quantprecision = 1 and = 0, single graph and per-module.

    .venv/bin/python scripts/ab_exact_int8.py     (needs ../shared/data/real_speech)
"""
import glob
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import heron.runtime.sessions as sessions
from heron.runtime.spotter import KeywordSpotter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"


def main() -> int:
    files = sorted(glob.glob(str(SHARED / "sentences" / "*.wav")))
    if not files:
        raise SystemExit(f"no real speech under {SHARED}")
    speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in files])[:16000 * 60]
    for mode in ("1", "0"):
        sessions.needs_exact_int8 = lambda *a, **k: True  # set the option explicitly, to its value below
        sessions.EXACT_INT8 = ("session.x64quantprecision", mode)
        for skip in (False, True):
            sp = KeywordSpotter.load(threads=1, skip_gates=skip)
            sp.encode(speech[:16000])
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                lp = sp.encode(speech)[0]
                times.append(time.perf_counter() - t0)
            print(f"x64quantprecision={mode} {'per-module' if skip else 'single graph'}: encoder RTF "
                  f"{min(times) / 60:.5f}, output checksum {float(lp.sum()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
