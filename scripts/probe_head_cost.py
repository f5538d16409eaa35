"""What one step of the shipped draft head costs where speculation runs it: right after a target call, with the
target's weights just streamed through the caches, against the same step repeated alone (issue 25: why the
measured speed-up trails the predicted one).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_head_cost.py --threads 2 [--rounds 3] [--bits 4]

The target is SmolLM2 on the default engine (the native decoder where built), the head the shipped one as
`--speculative head` runs it (`--engine auto`: in the native library, in the target's team, beside a native target;
else on onnxruntime, 1 thread); `--engine onnxruntime` times the onnxruntime head beside a native target (session
41's setting). Per round: the head's step repeated 200 times alone (its
weights warm), then 100 pairs of one target step and one head step (the head cold, as in a speculative round);
milliseconds per step, the median over rounds. Nothing is written but --out.
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
    ap.add_argument("--engine", default="auto", choices=["auto", "native", "onnxruntime"], help="the head's engine")
    ap.add_argument("--bits", type=int, default=8, choices=[8, 4],
                    help="the native head's projection and blocks as stored (8) or re-rounded to 4 bits")
    ap.add_argument("--out", default=None, help="also write the figures (JSON) here")
    a = ap.parse_args(argv)
    import heron
    from heron.runtime.draft_head import DEFAULT_HEAD, DraftHead

    lm = heron.load_lm("smollm2", threads=a.threads)
    b = lm.backend
    head = DraftHead(DEFAULT_HEAD, threads=1, target=b, engine=a.engine, bits=a.bits)
    h = np.random.default_rng(0).standard_normal(b.dim if hasattr(b, "dim") else 576).astype(np.float32)
    rows = []
    for _ in range(a.rounds):
        for _ in range(5):
            head.step(h, 42)
        t = time.perf_counter()
        for _ in range(200):
            head.step(h, 42)
        warm = (time.perf_counter() - t) / 200
        b.reset()
        b.reserve(300)
        logits = b.forward(list(range(100, 200)), last=1)
        target = cold = 0.0
        for _ in range(100):
            t0 = time.perf_counter()
            logits = b.forward([int(logits[-1].argmax())], last=1)
            t1 = time.perf_counter()
            head.step(h, 42)
            cold += time.perf_counter() - t1
            target += t1 - t0
        rows.append({"warm_ms": warm * 1e3, "cold_ms": cold * 10, "target_ms": target * 10})
        r = rows[-1]
        print(f"head alone {r['warm_ms']:.3f} ms | after a target step {r['cold_ms']:.3f} ms | target step "
              f"{r['target_ms']:.3f} ms", flush=True)
    med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
    print(f"median: head alone {med['warm_ms']} ms, after a target step {med['cold_ms']} ms "
          f"({med['cold_ms'] / med['target_ms']:.2f} of a target step of {med['target_ms']} ms; engine "
          f"{getattr(b, 'name', type(b).__name__)}, {a.threads} thread(s); the head on {head.engine}, {a.bits}-bit)")
    if a.out:
        Path(a.out).write_text(json.dumps({"threads": a.threads, "head_engine": head.engine, "bits": a.bits, "rounds": rows,
                                           "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
