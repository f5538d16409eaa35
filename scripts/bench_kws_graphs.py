"""Time each per-module graph of KWS bundles (microseconds per 320 ms chunk, 1 thread): the front end, the
speech gate, layer 0's gate / FFN / attention / convolution / norm, the head. Random inputs of the graphs'
own shapes; best of 5 rounds of 300 calls each, bundles interleaved per graph. The graph files are read from
each folder's `modular/` (int8 where present) without loading the bundle, so bundles of earlier heron
versions can be compared too. Run on one core:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/bench_kws_graphs.py runs/old-bundle runtime/assets/kws
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
GRAPHS = ("frontend", "layer0_gate", "layer0_ffn1", "layer0_attn", "layer0_conv", "layer0_ffn2", "layer0_norm", "head")


def time_us(session, rounds: int = 5, calls: int = 300) -> float:
    from heron.runtime.sessions import runner

    rng = np.random.default_rng(0)
    feeds = {i.name: (0.1 * rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])).astype(np.float32)
             for i in session.get_inputs()}
    run = runner(session)
    for _ in range(30):
        run(feeds)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            run(feeds)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+")
    a = ap.parse_args()
    from heron.runtime.metrics import machine
    from heron.runtime.sessions import open_session

    rows = {b: {} for b in a.bundles}
    for g in GRAPHS + ("speech_gate",):
        for b in a.bundles:
            path = next((p for p in (Path(b) / "modular" / f"{g}.int8.onnx", Path(b) / "modular" / f"{g}.onnx")
                         if p.is_file()), None)
            if path is not None:
                rows[b][g] = round(time_us(open_session(path)), 1)
    for b, r in rows.items():
        print(json.dumps({"bundle": b, "us_per_chunk": r, "machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
