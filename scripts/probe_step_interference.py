"""What the work between two target calls costs the next call (issue 25: why a speculative round costs more than its
calls' isolated prices on some CPUs).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_step_interference.py --threads 2 [--rounds 3] [--out F.json]

The target is SmolLM2 on the default engine (the native decoder where built). Per round and per setting, 150 one-token
target steps after a 100-token context, each preceded by one of: nothing (plain decoding's back-to-back steps); one
step of the shipped draft head (what a speculative round runs between its calls); a pass over 12 MB (the head's
weights' size) or 96 MB of other memory; a 0.4 ms spin of the calling thread (time between calls without memory
traffic: the target's threads wait). Milliseconds per target step (the step alone is timed, not what precedes it),
the median over the steps, then over rounds; each setting also as a ratio to back-to-back steps. Where the target's
weights stay in a large cache between back-to-back steps, whatever runs between two calls evicts part of them and the
next call pays to read them again. Nothing is written but --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="the target's threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", default=None, help="also write the figures (JSON) here")
    a = ap.parse_args(argv)
    import heron
    from heron.runtime.decoding import SpeculativeOptions
    from heron.runtime.metrics import machine

    lm = heron.load_lm("smollm2", threads=a.threads, prompt_cache=False)
    b = lm.backend
    head = lm.draft_head(SpeculativeOptions(method="head"))
    rng = np.random.default_rng(0)
    context = rng.integers(100, 20000, 100).tolist()
    small, big = np.ones(12 << 20, np.uint8), np.ones(96 << 20, np.uint8)

    def head_step():
        head.greedy(b.hidden_at(len(b.cached_tokens()) - 1), 42, 1)

    def spin():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0004:
            pass

    settings = {"back-to-back": lambda: None, "after a head step": head_step,
                "after a 12 MB pass": lambda: small.sum(), "after a 96 MB pass": lambda: big[::64].sum(),
                "after a 0.4 ms spin": spin}
    rows = []
    for r in range(a.rounds):
        row = {}
        for name, between in settings.items():
            b.reset()
            b.forward(context, last=1)
            ts = []
            for _ in range(a.steps):
                between()
                t0 = time.perf_counter()
                b.forward([int(rng.integers(100, 20000))], last=1)
                ts.append(time.perf_counter() - t0)
            row[name] = 1e3 * statistics.median(ts)
        rows.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()), flush=True)
    med = {k: round(statistics.median(r[k] for r in rows), 3) for k in settings}
    base = med["back-to-back"]
    ratio = {k: round(v / base, 2) for k, v in med.items()}
    print(f"median target step ({getattr(b, 'name', type(b).__name__)}, {a.threads} thread(s); {machine()}): "
          + ", ".join(f"{k} {v} ms ({ratio[k]}x)" for k, v in med.items()))
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": machine(), "threads": a.threads, "rounds": rows,
                                           "median_ms": med, "over_back_to_back": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
