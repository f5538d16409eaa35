"""How often a word the draft head draws holds when sampling (issue 25): sum over the vocabulary of min(p, q), the
probability that speculative sampling keeps a word drawn from the head's q against the target's p, for the head's
first word (from the target's hidden state) and its second (chained from its own feature), with the head's logits
scaled by each --alphas value before the temperature (1: the head as it runs; a calibration check).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_sampled_acceptance.py --temperature 0.8 [--top-p 1.0]

SmolLM2 by name (the native decoder where built) answers the 8 chat questions of scripts/bench_smollm2_spec.py at
--temperature (seed = the question's index, to the end of its turn, at most 160 words); one teacher-forced call gives
the target's logits and hidden states along each answer, and at every position the shipped head (or --head) steps
from the real hidden state and word. Prints the mean over positions per alpha; nothing is written but --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2_spec import CHAT_PROMPTS, write_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5])
    ap.add_argument("--head", default=None, help="a draft-head bundle (default: the shipped head)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the figures (JSON) here")
    a = ap.parse_args(argv)
    import heron
    from heron.runtime.decoding import probs
    from heron.runtime.draft_head import DEFAULT_HEAD, DraftHead

    lm = heron.load_lm("smollm2", threads=a.threads)
    b = lm.backend
    head = DraftHead(a.head or DEFAULT_HEAD, threads=1, target=b)
    order = np.argsort(head.words, kind="stable")
    ids = head.words[order]
    held = {k: {x: [] for x in a.alphas} for k in ("first", "second")}
    for i, question in enumerate(CHAT_PROMPTS):
        prompt = lm.encode(lm.chat_prompt([{"role": "user", "content": question}]))
        opts = heron.GenerationOptions(max_new_tokens=160, temperature=a.temperature, top_p=a.top_p, seed=i)
        seq = prompt + [t.id for t in lm.generate(prompt, opts)]
        b.reset()
        logits = b.forward(seq, last=len(seq))
        hidden = np.stack([b.hidden_at(k) for k in range(len(seq))])
        for j in range(len(prompt) + 1, len(seq) - 1):  # word j drafted from the state that chose word j - 1
            first, feature = head.step(hidden[j - 2], seq[j - 1])
            second, _ = head.step(feature, seq[j])  # word j + 1, from the head's own feature after word j
            for k, lg, p in (("first", first, logits[j - 1]), ("second", second, logits[j])):
                pt = probs(p, a.temperature, a.top_p)
                for x in a.alphas:
                    held[k][x].append(float(np.minimum(pt[ids], probs(x * lg[order], a.temperature, a.top_p)).sum()))
    n = len(held["first"][a.alphas[0]])
    report = {"temperature": a.temperature, "top_p": a.top_p, "positions": n,
              "held": {k: {str(x): round(float(np.mean(v)), 4) for x, v in d.items()} for k, d in held.items()}}
    print(f"temperature {a.temperature}, top-p {a.top_p}: {n} positions of 8 answers; mean sum min(p, q)")
    for x in a.alphas:
        print(f"  head logits x {x:<5} first word {report['held']['first'][str(x)]:.4f}  second word "
              f"{report['held']['second'][str(x)]:.4f}")
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
