"""Several SmolLM2 bundles' plain decoding speed, alternated in one process: an A/B of graph changes.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/ab_smollm2_bundles.py runs/a runs/b --rounds 14 \
        --out runs/ab.json                                  # writes only --out
    ... scripts/ab_smollm2_bundles.py runs/a runs/a:fast --prompts code chat summary   # one bundle, both step kinds
    ... scripts/ab_smollm2_bundles.py runs/a:fast runs/a:fast:small-pages            # huge pages or not

A bundle given as DIR:fast runs one-row steps (heron lm generate --fast-steps, OnnxLM.exact_steps False); DIR:small-pages
(after :fast where both) leaves its weights in the pages onnxruntime gave them (load_lm's huge_pages False: the
memory a session loads into is its own, so both kinds run side by side in one process). Each round
decodes 128 greedy tokens after each prompt (--prompts: bench_smollm2.py's code request, chat question and 404-token
text to summarize; default the code request) with every bundle in turn (the order rotates each round), so a drift of
this machine's speed hits each bundle alike; bench_smollm2.py runs each backend in its own process, minutes apart,
where a virtualized CPU's speed can move by 20%. Prints decode tokens/s (median, min, max over the rounds) per
prompt and bundle, and the median of each bundle's per-round ratio to the first bundle.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2 import decode_prompts  # noqa: E402

FAST, SMALL_PAGES = ":fast", ":small-pages"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="folders of heron lm export smollm2, DIR:fast for one-row steps, "
                                               "DIR[:fast]:small-pages without huge pages (the first is the reference)")
    ap.add_argument("--prompts", nargs="+", default=["code"], choices=list(decode_prompts()),
                    help="bench_smollm2.py's prompts to decode after, each in every round")
    ap.add_argument("--rounds", type=int, default=14, help="rounds of one decode per bundle")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per decode")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    ap.add_argument("--out", default=None, help="also write the figures (JSON) here")
    args = ap.parse_args()
    if args.rounds < 1 or args.new_tokens < 2 or args.threads < 1:
        raise SystemExit("--rounds and --threads must be >= 1, --new-tokens >= 2")
    import numpy as np

    import heron
    from heron.runtime.decoding import fresh
    from heron.runtime.metrics import machine

    def load(spec: str):
        small = spec.endswith(SMALL_PAGES)
        spec = spec.removesuffix(SMALL_PAGES)
        return heron.load_lm(spec.removesuffix(FAST), threads=args.threads, exact_steps=not spec.endswith(FAST),
                             huge_pages=not small, prompt_cache=False)

    lms = {b: load(b) for b in args.bundles}
    for b, lm in lms.items():
        print(f"{b}: {lm.backend.huge_pages_bytes / 2 ** 20:.0f} MB of its session in huge pages", flush=True)
    first = lms[args.bundles[0]]
    texts = decode_prompts()
    prompts = {name: first.encode(first.chat_prompt([{"role": "user", "content": texts[name]}])) for name in args.prompts}

    def decode(lm, prompt) -> float:
        b = lm.backend
        fresh(b, len(prompt) + args.new_tokens)  # the cache sized up front, as heron lm generate sizes it
        out = [int(np.argmax(b.forward(prompt, last=1)[-1]))]
        t0 = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            out.append(int(np.argmax(b.forward([out[-1]], last=1)[-1])))
        return (args.new_tokens - 1) / (time.perf_counter() - t0)

    speeds = {name: {b: [] for b in args.bundles} for name in prompts}
    for r in range(args.rounds):
        order = args.bundles[r % len(args.bundles):] + args.bundles[:r % len(args.bundles)]
        for name, prompt in prompts.items():
            for b in order:
                speeds[name][b].append(decode(lms[b], prompt))
    report = {"cpu": machine(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "rounds": args.rounds,
              "new_tokens": args.new_tokens, "command": " ".join(sys.argv), "prompts": {}}
    for name, by_bundle in speeds.items():
        ref = by_bundle[args.bundles[0]]
        report["prompts"][name] = rows = {}
        for b, s in by_bundle.items():
            ratio = statistics.median(x / y for x, y in zip(s, ref))
            rows[b] = {"decode_tok_s": s, "median": statistics.median(s), "ratio_to_first": ratio}
            print(f"{name}, {b}: median {statistics.median(s):.1f} tok/s (min {min(s):.1f}, max {max(s):.1f}); "
                  f"per-round ratio to {args.bundles[0]}: median {ratio:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
