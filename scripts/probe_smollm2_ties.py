"""Where SmolLM2's quantized graphs part from fp32's greedy answers, and by how much (issue 24's "6 of 8" target).

    .venv/bin/python scripts/probe_smollm2_ties.py --bundles runs/smol-i8s runs/smol-x2 --out runs/ties.json

The reference is heron's torch fp32 path on the dequantized GGUF (what scripts/bench_smollm2.py's "match" column
compares with): its first 32 greedy tokens after each of bench_smollm2.py's 8 chat prompts. Each bundle then reads
those tokens teacher-forced in one call: a greedy run keeps fp32's 32 tokens exactly when every teacher-forced argmax
is fp32's, and parts at the first position where one is not. Per bundle and prompt: that position, fp32's own margin
there (its best word's logit over the bundle's choice) and the bundle's margin the other way; over all positions, how
far the bundle moves the gap between fp32's two best words (median, largest). --fast-steps also decodes each prompt
greedily with one-row steps (heron lm generate --fast-steps, OnnxLM.exact_steps False: a step rounds as attention's
one-row kernels do, not as the teacher-forced block) and counts the prompts whose 32 tokens stay fp32's. Writes only --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--bundles", nargs="+", required=True, help="folders of heron lm export smollm2")
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    ap.add_argument("--fast-steps", action="store_true", help="also decode greedily with one-row steps")
    args = ap.parse_args()
    import numpy as np

    import heron
    from bench_smollm2 import MATCH_TOKENS, QUESTIONS

    fp32 = heron.load_lm("smollm2", engine="torch")
    prompts = [fp32.encode(fp32.chat_prompt([{"role": "user", "content": q}])) for q in QUESTIONS]
    refs, ref_logits = [], []
    for ids in prompts:  # fp32's greedy tokens, then its logits at each of them in one call
        b = fp32.backend
        b.reset()
        out = [int(np.argmax(b.forward(ids, last=1)[-1]))]
        while len(out) < MATCH_TOKENS:
            out.append(int(np.argmax(b.forward([out[-1]], last=1)[-1])))
        b.reset()
        refs.append(out)
        ref_logits.append(b.forward(ids + out[:-1], last=MATCH_TOKENS).astype(np.float64))
    report = {"prompts": len(QUESTIONS), "tokens": MATCH_TOKENS, "bundles": {}}
    for folder in args.bundles:
        lm = heron.load_lm(folder)
        rows, moves = [], []
        for q, ids, ref, lf in zip(QUESTIONS, prompts, refs, ref_logits):
            b = lm.backend
            b.reset()
            lb = b.forward(ids + ref[:-1], last=MATCH_TOKENS).astype(np.float64)
            top2 = np.argsort(lf, axis=-1)[:, -2:]  # fp32's two best words per position
            a, c = top2[:, 1], top2[:, 0]
            pos = np.arange(MATCH_TOKENS)
            moves.append(np.abs((lb[pos, a] - lb[pos, c]) - (lf[pos, a] - lf[pos, c])))
            wrong = np.flatnonzero(lb.argmax(-1) != np.asarray(ref))
            row = {"prompt": q, "kept": int(wrong[0]) if len(wrong) else MATCH_TOKENS}
            if len(wrong):
                k = int(wrong[0])
                choice = int(lb[k].argmax())
                row.update(fp32_margin=round(float(lf[k, ref[k]] - lf[k, choice]), 4),
                           bundle_margin=round(float(lb[k, choice] - lb[k, ref[k]]), 4))
            rows.append(row)
        if args.fast_steps:  # the greedy run itself, step by step, one row per step
            b = heron.load_lm(folder, exact_steps=False).backend
            for row, ids, ref in zip(rows, prompts, refs):
                b.reset()
                out = [int(np.argmax(b.forward(ids, last=1)[-1]))]
                while len(out) < MATCH_TOKENS:
                    out.append(int(np.argmax(b.forward([out[-1]], last=1)[-1])))
                row["kept_greedy_fast_steps"] = next((i for i, (a, c) in enumerate(zip(out, ref)) if a != c),
                                                     MATCH_TOKENS)
        moved = np.concatenate(moves)
        report["bundles"][folder] = {
            "compute": lm.backend.manifest.source.get("compute"),
            "match": sum(r["kept"] == MATCH_TOKENS for r in rows), "per_prompt": rows,
            "match_greedy_fast_steps": (sum(r["kept_greedy_fast_steps"] == MATCH_TOKENS for r in rows)
                                        if args.fast_steps else None),
            "top2_gap_moved": {"median": round(float(np.median(moved)), 4), "max": round(float(moved.max()), 4)}}
        r = report["bundles"][folder]
        print(f"{folder}: {r['match']}/{len(QUESTIONS)} keep fp32's {MATCH_TOKENS} tokens; the gap between fp32's two "
              f"best words moves by {r['top2_gap_moved']['median']} (median), {r['top2_gap_moved']['max']} at most"
              + (f"; greedy with one-row steps: {r['match_greedy_fast_steps']}/{len(QUESTIONS)}" if args.fast_steps else ""))
        for row in rows:
            if row["kept"] < MATCH_TOKENS:
                print(f"  {row['prompt'][:40]:40s} parts at token {row['kept']}: fp32's margin {row['fp32_margin']}, "
                      f"the bundle's the other way {row['bundle_margin']}")
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
