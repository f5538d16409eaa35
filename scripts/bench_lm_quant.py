"""heron's torch LM path with fp32, int8 and int8/int4 weights (heron.models.lm.quant): decode tokens/s,
the model's weight bytes, the process's memory, and how many leading greedy tokens equal fp32's. Each
setting runs in its own process (so that peak memory is its own), one after another:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/bench_lm_quant.py --model smollm2 --tokens 32
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROMPTS = ("Write a Python function that reverses a string.", "Explain what a hash table is.",
           "List three uses of the number zero.")


def one(model: str, weights: str, tokens: int) -> dict:
    import heron
    from heron.models.lm.quant import weight_bytes
    from heron.runtime.decoding import GenerationOptions

    lm = heron.load_lm(model, engine="torch", weights=None if weights == "fp32" else weights)
    outs, seconds, n = [], 0.0, 0
    for p in PROMPTS:
        ids = lm.tokenizer.encode(p)
        t0 = time.perf_counter()
        out = [int(getattr(t, "id", t)) for t in lm.generate(ids, GenerationOptions(max_new_tokens=tokens))]
        seconds += time.perf_counter() - t0
        n += len(out)
        outs.append(out)
    status = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
              if k in ("VmRSS", "VmHWM")}
    return {"weights": weights, "decode_tok_s": round(n / seconds, 2), "weight_mb": round(weight_bytes(lm.model) / 2**20),
            "rss_mb": round(status["VmRSS"]), "peak_rss_mb": round(status["VmHWM"]), "tokens": outs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--weights", default="fp32,int8,int4")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.model, a.one, a.tokens)))
        return 0
    rows = []
    for w in a.weights.split(","):
        p = subprocess.run([sys.executable, __file__, "--model", a.model, "--tokens", str(a.tokens), "--one", w],
                           capture_output=True, text=True, check=True)
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    ref = next((r["tokens"] for r in rows if r["weights"] == "fp32"), None)
    from heron.runtime.metrics import machine

    for r in rows:
        toks = r.pop("tokens")
        if ref is not None:
            r["leading_equal_to_fp32"] = [next((i for i, (x, y) in enumerate(zip(o, f)) if x != y), min(len(o), len(f)))
                                          for o, f in zip(toks, ref)]
        print(json.dumps({**r, "machine": machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
