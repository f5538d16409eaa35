"""SmolLM2's fp32 torch target with its linears on torch's F.linear (MKL) and on oneDNN's packed copies
(heron.models.lm.quant.PackedLinear, what heron's torch backend uses on a CPU since session 33): one decoding step
and one verify of 9 tokens after 96 cached positions, at 1 and 2 threads, rounds alternated in one process
(median of `--rounds` x 10 calls), and whether the greedy answers to the bench's chat questions stay the same.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_torch_linears.py [--rounds 5] [--questions 8] [--json F]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds (default 5)")
    ap.add_argument("--questions", type=int, default=8, help="chat questions answered both ways (default 8)")
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens per answer compared (default 32)")
    ap.add_argument("--json", help="write the figures here too (default: print only)")
    a = ap.parse_args()

    import torch

    import heron
    from heron.bench_lm import _time_call, chat_prompts
    from heron.models.lm.quant import PackedLinear
    from heron.runtime.decoding import GenerationOptions
    from heron.runtime.metrics import machine

    lm = heron.load_lm("smollm2", engine="torch", threads=2)
    packed = [m for m in lm.model.modules() if isinstance(m, PackedLinear)]
    if not packed:
        raise SystemExit("this torch build has no oneDNN (or the model is too large to pack): nothing to compare")
    t = lm.backend
    ctx = list(range(1, 97))

    def use(on: bool) -> None:
        for m in packed:
            m.__class__ = PackedLinear if on else torch.nn.Linear

    def call_ms(n: int) -> float:  # a call of n tokens after the cached context, then trimmed back
        def f():
            t.forward(ctx[:n], last=n)
            t.trim(n)
        return 1e3 * _time_call(f, 10)

    times: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for on in (False, True):
                use(on)
                t.reset()
                t.forward(ctx)
                for n in (1, 9):
                    times.setdefault(f"{'onednn' if on else 'F.linear'} {threads}t {n} tok", []).append(call_ms(n))
    torch.set_num_threads(2)
    opts = GenerationOptions(max_new_tokens=a.tokens, stop_at_eot=False)
    answers = {}
    for on in (False, True):
        use(on)
        answers[on] = [[x.id for x in lm.generate(p, opts)] for p in chat_prompts(lm, a.questions)]
    use(True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "ms_median": {k: round(float(np.median(v)), 2) for k, v in times.items()},
              "ms_min": {k: round(min(v), 2) for k, v in times.items()},
              "same_answers": sum(x == y for x, y in zip(answers[False], answers[True])), "questions": a.questions}
    for threads in (1, 2):
        for n in (1, 9):
            old, new = (report["ms_median"][f"{w} {threads}t {n} tok"] for w in ("F.linear", "onednn"))
            print(f"{threads} thread(s), {n} token(s): F.linear {old:.1f} ms, oneDNN {new:.1f} ms ({old / new:.2f}x)")
    print(f"greedy answers ({a.tokens} tokens) the same both ways: {report['same_answers']} of {a.questions}")
    print(report["machine"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
