"""Sampled decoding on SmolLM2 (issue 25): what temperature and top-p cost plain decoding and speculation, against
sampling as heron did it before session 46 in the same run (numpy's Generator.choice, a full sort of the vocabulary
for top-p, the draft head's draws over the whole vocabulary, every row of a verify call's distributions computed), or
with --against numpy against session 46's numpy sampler (decoding.numpy_probs / numpy_draw, what runs where the
native library is not built) instead of the native library's (session 47).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_sampling.py --threads 2 [--rounds 3] [--against numpy]
        [--out runs/sampling.json]

The 8 chat questions of scripts/bench_smollm2_spec.py, each answered to its end of turn (at most 160 words), by
SmolLM2 by name (the native decoder where it is built). Settings: greedy, temperature 0.8, temperature 0.8 with
top-p 0.9 (the seed of each answer is the question's index: every method draws from the same seeds). Methods: plain
decoding and `--speculative head` (the shipped head with prompt lookup first, windows of up to 8), each with the
sampler as shipped and with the reference ("old sampler" / "numpy sampler"). Each round decodes every question once
with every (setting, method) in turn, each method beside its reference, which of the two first alternating by round;
decode tokens/s = the words after each answer's first / the time from its first word to its last (the prefill left
out), summed over the questions; the median over rounds. Also per row: words per target call, and whether the
reference's answers were the same words (it draws from the same uniforms: they are, unless a top-p cut falls
between two equally likely words, which the old sort ordered at random, or a uniform falls within rounding of a
word's edge). First, and alone with --sampler-only: the sampler's own milliseconds per row (the old
sampler, session 46's numpy one, the native library's) on the logits along one answer. Nothing is written but --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2_spec import CHAT_PROMPTS, write_report  # noqa: E402

SETTINGS = {"greedy": (0.0, 1.0), "temperature 0.8": (0.8, 1.0), "temperature 0.8, top-p 0.9": (0.8, 0.9)}
NEW_TOKENS = 160


def old_probs(logits, temperature: float, top_p: float, top_k: int = 0, min_p: float = 0.0):
    """decoding.probs before session 46: top-p by a full argsort of every row (it had no top-k or min-p: the bench
    leaves them off)."""
    if temperature == 0:
        logits = np.asarray(logits)
        out = np.zeros(logits.shape, np.float32)
        np.put_along_axis(out, logits.argmax(-1)[..., None], 1.0, axis=-1)
        return out
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sp = np.take_along_axis(p, order, -1)
        keep = np.cumsum(sp, -1) - sp < top_p
        mask = np.zeros_like(p, dtype=bool)
        np.put_along_axis(mask, order, keep, axis=-1)
        p = np.where(mask, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def old_draw(p, rng) -> int:
    """decoding.draw before session 46: numpy's Generator.choice."""
    if p.max() == 1.0:
        return int(p.argmax())
    return int(rng.choice(len(p), p=p))


def old_sampled(self, hidden, token: int, g: int, streams, rng):
    """HeadDrafter._sampled before session 46: each word drawn from the head's distribution spread over the whole
    vocabulary."""
    window, qs = [], []
    full = np.full(self.vocab_size, -np.inf, np.float32)
    for _ in range(g):
        logits, hidden = self.head.step(hidden, token, streams)
        streams = None
        full[self.head.words] = logits
        q = old_probs(full, self.opts.temperature, self.opts.top_p)
        token = old_draw(q, rng)
        qs.append(q)
        window.append(token)
    return window, np.stack(qs)


@contextlib.contextmanager
def numpy_sampler(on: bool):
    """While on: session 46's numpy sampler (decoding.numpy_probs / numpy_draw) where the native library's would run."""
    from heron.runtime import decoding

    saved = decoding.SAMPLER
    decoding.SAMPLER = "numpy" if on else saved
    try:
        yield
    finally:
        decoding.SAMPLER = saved


@contextlib.contextmanager
def old_sampler(on: bool):
    """While on: sampling as before session 46: probs and draw wherever the decoding loops and the draft head call
    them, the head's draws over the whole vocabulary, and every row of a verify call's distributions computed."""
    from heron.runtime import decoding, draft_head

    saved = [(m, n, getattr(m, n)) for m in (decoding, draft_head) for n in ("probs", "draw")]
    saved += [(decoding, "TargetRows", decoding.TargetRows), (draft_head.HeadDrafter, "_sampled",
                                                                draft_head.HeadDrafter._sampled)]
    if on:
        for m, n, _ in saved[:4]:
            setattr(m, n, old_probs if n == "probs" else old_draw)
        decoding.TargetRows = lambda logits, sampling: old_probs(logits, *sampling)  # every row at once
        draft_head.HeadDrafter._sampled = old_sampled
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def sampler_costs(lm, text: str, repeats: int = 5) -> dict:
    """Milliseconds a row of the sampler's own work takes on SmolLM2's logits along one answer (100 words sampled at
    temperature 0.8, seed 0; the best of `repeats` passes over its rows): the distribution at top-p 1 and 0.9, one
    draw from each, by the sampler before session 46 ("old"), session 46's numpy code ("numpy", "new" in session 46's
    reports) and the native library's ("native", where it is built); and the median nucleus size at top-p 0.9."""
    import time

    import heron
    from heron.runtime import native
    from heron.runtime.decoding import nucleus, numpy_draw, numpy_probs

    prompt = lm.encode(text)
    answer = [t.id for t in lm.generate(prompt, heron.GenerationOptions(max_new_tokens=100, temperature=0.8, seed=0))]
    lm.backend.reset()
    logits = lm.backend.forward(prompt + answer, last=len(answer))
    rng = np.random.default_rng(0)

    def ms(fn, rows) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for r in rows:
                fn(r)
            best = min(best, time.perf_counter() - t0)
        return round(1e3 * best / len(rows), 3)

    fast = native.sampler()
    out = {"nucleus_words_at_top_p_0.9": int(np.median([len(nucleus(numpy_probs(r, 0.8, 1.0), 0.9))
                                                           for r in logits]))}
    for top_p in (1.0, 0.9):
        dists = [numpy_probs(r, 0.8, top_p) for r in logits]
        row = out[f"top_p {top_p}"] = {"probs_old": ms(lambda r: old_probs(r, 0.8, top_p), logits),
                                       "probs_numpy": ms(lambda r: numpy_probs(r, 0.8, top_p), logits),
                                       "draw_old": ms(lambda p: old_draw(p, rng), dists),
                                       "draw_numpy": ms(lambda p: numpy_draw(p, rng), dists)}
        if fast is not None:
            row["probs_native"] = ms(lambda r: fast.probs(r, 0.8, top_p), logits)
            row["draw_native"] = ms(lambda p: fast.draw(p, rng), dists)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--questions", type=int, default=len(CHAT_PROMPTS), help="the first N of the 8 chat questions")
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    ap.add_argument("--sampler-only", action="store_true",
                    help="only the sampler's own cost per row: old, numpy, native (seconds, not minutes)")
    ap.add_argument("--against", choices=("old", "numpy"), default="old",
                    help="the reference sampler run beside the shipped one: before session 46 (old), or session 46's "
                         "numpy code where the native library's runs (numpy)")
    a = ap.parse_args(argv)
    import heron
    from heron.runtime.metrics import machine

    lm = heron.load_lm("smollm2", threads=a.threads, prompt_cache=False)
    head = heron.SpeculativeOptions(method="head", gamma=8, adaptive=True, head_lookup=True)
    questions = CHAT_PROMPTS[:a.questions]
    texts = [lm.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    costs = sampler_costs(lm, texts[0])
    print(f"the sampler's own work per row on SmolLM2's logits, ms: {json.dumps(costs)}", flush=True)
    if a.sampler_only:
        write_report(a.out, {"machine": machine(), "sampler_ms_per_row": costs})
        return 0
    ref = f", {a.against} sampler"
    reference = old_sampler if a.against == "old" else numpy_sampler
    methods = {"plain": (None, False), f"plain{ref}": (None, True), "head+lookup": (head, False),
               f"head+lookup{ref}": (head, True)}
    rows = {(s, m): {"rate": [], "calls": [], "answers": None} for s in SETTINGS for m in methods}
    for rnd in range(a.rounds):
        for s, (temperature, top_p) in SETTINGS.items():
            order = list(methods.items())
            if rnd % 2:  # each method beside its reference: which runs first alternates round by round (VM drift)
                order = [order[1], order[0], order[3], order[2]]
            for m, (spec, old) in order:
                if temperature == 0 and old:
                    continue  # greedy draws nothing
                words = seconds = calls = 0
                answers = []
                with reference(old):
                    for i, text in enumerate(texts):
                        opts = heron.GenerationOptions(max_new_tokens=NEW_TOKENS, temperature=temperature,
                                                       top_p=top_p, seed=i)
                        stats = heron.DecodeStats(method=m)
                        answers.append([t.id for t in lm.generate(text, opts, spec, stats)])
                        words += len(answers[-1]) - 1
                        seconds += stats.token_times[-1] - stats.token_times[0]
                        calls += stats.target_calls
                r = rows[s, m]
                r["rate"].append(words / seconds)
                r["calls"].append((words + len(texts)) / calls)  # every word, the first included
                r["answers"] = r["answers"] or answers
        print(f"round {rnd + 1} of {a.rounds} done", file=sys.stderr, flush=True)
    report = {"machine": machine(), "threads": a.threads, "questions": len(texts), "rounds": a.rounds,
              "against": a.against,
              "sampler_ms_per_row": costs, "rows": {}}
    print(f"{report['machine']}; {a.threads} thread(s); {len(texts)} chat questions to their end of turn; decode "
          f"tokens/s, median of {a.rounds} rounds")
    for s in SETTINGS:
        base = statistics.median(rows[s, "plain"]["rate"])
        for m in methods:
            r = rows[s, m]
            if not r["rate"]:
                continue
            rate = statistics.median(r["rate"])
            same = None
            if m.endswith(ref):
                same = r["answers"] == rows[s, m.removesuffix(ref)]["answers"]
            report["rows"][f"{s} | {m}"] = {"tokens_per_s": round(rate, 1), "vs_plain": round(rate / base, 3),
                                           "words_per_call": round(statistics.median(r["calls"]), 2),
                                           "same_words_as_shipped_sampler": same}
            print(f"{s:28} {m:26} {rate:7.1f} tokens/s  {rate / base:.2f}x plain  "
                  f"{statistics.median(r['calls']):.2f} words/call" + ("" if same is None else f"  same words: {same}"))
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
