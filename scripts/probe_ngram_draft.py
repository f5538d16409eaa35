"""How an n-gram draft counted from SmolLM2's own answers compares with the draft head, position by position, on the
answers the speculation benchmarks decode (issue 25).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/draft_head_data_batched.py --out runs/head-data-b \
        --shard 0/2 --limit 1024      (and --shard 1/2 on core 1: 1,024 answers of set 5, none a benchmark's prompt)
    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_ngram_draft.py --bundle smollm2 --threads 2 \
        --corpus runs/head-data-b --out runs/probe-ngram.json

--corpus: folders of answers written by scripts/draft_head_data.py / draft_head_data_batched.py (one .npz per answer
with `prompt` and `tokens`). The tables count every answer word after the last n words before it (the prompt's end
included). At every position of the target's greedy answers (replay_speculation.py's records), teacher-forced: the
head's greedy window from the target's true feature and the n-gram window from the true context, each scored by how
many of its words match the answer (windows of up to G words). Reported per prompt set: how often each one's first
word is right, how often the n-gram draft has a window at all, the mean words held per window, the best of the two
per position (what a tree verifying both could hold), the head's chain with the n-gram's word put in wherever it is
surer (MIXES), and the n-gram draft drafting wherever its first word is at least S sure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

G = 8

# the n-gram draft: the word that most often followed the last n words (n = 4, 3, 2) in the corpus, chained for a
# window (REST's datastore and lookahead decoding's n-gram pool are its relatives); one table per order n: the contexts
# seen at least min_total times as sorted uint64 keys (n 16-bit word ids), the likeliest next word, how often it
# followed (hits) and how often the context was seen (total)
ORDERS = (4, 3, 2)   # longest context first; a single word is too weak a hint (prompt lookup found the same)
MAX_ORDER = 4        # 4 x 16-bit ids fill a uint64 key
MAX_VOCAB = 1 << 16


def pack(words: Sequence[int] | np.ndarray) -> np.ndarray:
    """(..., n) word ids < 2^16 -> (...,) uint64 keys, the first word in the highest bits."""
    w = np.asarray(words, np.uint64)
    key = np.zeros(w.shape[:-1], np.uint64)
    for i in range(w.shape[-1]):
        key = (key << np.uint64(16)) | w[..., i]
    return key


@dataclass(frozen=True)
class Table:
    """One order's contexts: keys (K,) uint64 sorted, next (K,) the likeliest next word, hits (K,) how often it
    followed, total (K,) how often the context was seen."""
    n: int
    keys: np.ndarray
    next: np.ndarray
    hits: np.ndarray
    total: np.ndarray

    def find(self, key: int) -> int:
        """The row of `key`, or -1."""
        i = int(np.searchsorted(self.keys, np.uint64(key)))
        return i if i < len(self.keys) and int(self.keys[i]) == key else -1


def count(sequences: Iterable[tuple[Sequence[int], int]], orders: Sequence[int] = ORDERS, min_total: int = 2,
          vocab_size: int = MAX_VOCAB) -> dict[int, Table]:
    """Tables from (tokens, start) pairs: every word of tokens[start:] is counted as the follower of the n words
    before it (contexts may reach into tokens[:start], a prompt's end); contexts seen fewer than min_total times
    are dropped (a single sighting predicts little and would fill the tables)."""
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"n-gram tables pack 16-bit word ids; this vocabulary has {vocab_size} words")
    if not orders or any(not 1 <= n <= MAX_ORDER for n in orders):
        raise ValueError(f"orders must be 1..{MAX_ORDER}, got {list(orders)}")
    ctx: dict[int, list[np.ndarray]] = {n: [] for n in orders}
    nxt: dict[int, list[np.ndarray]] = {n: [] for n in orders}
    for tokens, start in sequences:
        t = np.asarray(tokens, np.int64)
        if t.size and (t.min() < 0 or t.max() >= vocab_size):
            raise ValueError(f"a word id outside 0..{vocab_size - 1}")
        for n in orders:
            first = max(start, n)  # the first follower with n words before it
            if first >= len(t):
                continue
            win = np.lib.stride_tricks.sliding_window_view(t, n + 1)[first - n:]  # (m, n + 1)
            ctx[n].append(pack(win[:, :n]))
            nxt[n].append(win[:, n])
    tables = {}
    for n in orders:
        if not ctx[n]:
            tables[n] = Table(n, np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.uint32),
                              np.zeros(0, np.uint32))
            continue
        k, w = np.concatenate(ctx[n]), np.concatenate(nxt[n])
        order = np.lexsort((w, k))
        k, w = k[order], w[order]
        pair_start = np.flatnonzero(np.r_[True, (k[1:] != k[:-1]) | (w[1:] != w[:-1])])
        pk, pw = k[pair_start], w[pair_start]
        pc = np.diff(np.r_[pair_start, len(k)])          # how often each (context, word) pair occurs
        by = np.lexsort((pw, -pc, pk))                   # per context: the likeliest word first (ties: smallest id)
        pk, pw, pc = pk[by], pw[by], pc[by]
        first = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
        total = np.add.reduceat(pc, first)
        keep = total >= min_total
        tables[n] = Table(n, pk[first][keep], pw[first][keep].astype(np.int32), pc[first][keep].astype(np.uint32),
                          total[keep].astype(np.uint32))
    return tables


class NgramDraft:
    """Windows from tables: window(seq, g) -> (words, sureness), each word the likeliest follower of the longest
    context (of the tables' orders) that ends the sequence so far, the window's own words included; it stops where
    no context is known or a word's hits / total falls under min_sure."""

    def __init__(self, tables: dict[int, Table], min_sure: float = 0.0):
        self.tables = [tables[n] for n in sorted(tables, reverse=True)]
        self.min_sure = min_sure

    def window(self, seq: Sequence[int], g: int) -> tuple[list[int], list[float]]:
        tail = [int(t) for t in seq[-MAX_ORDER:]]
        words, sure = [], []
        for _ in range(g):
            for t in self.tables:
                if len(tail) < t.n:
                    continue
                i = t.find(int(pack(tail[-t.n:])))
                if i >= 0:
                    s = int(t.hits[i]) / int(t.total[i])
                    self.last, self.last_row = t, i  # the table and row of the window's latest word
                    break
            else:
                break
            if s < self.min_sure:
                break
            w = int(t.next[i])
            words.append(w)
            sure.append(s)
            tail = tail[1:] + [w] if len(tail) == MAX_ORDER else tail + [w]
        return words, sure


def corpus(folders: list[str]):
    """(tokens, start) per answer: prompt + answer, counted from the answer's first word."""
    for folder in folders:
        for f in sorted(Path(folder).glob("*.npz")):
            with np.load(f, allow_pickle=False) as z:
                p, a = z["prompt"].astype(np.int64), z["tokens"].astype(np.int64)
            yield np.concatenate([p, a]), len(p)


def held(window: list[int], truth: list[int]) -> int:
    n = 0
    for w, t in zip(window, truth):
        if w != t:
            break
        n += 1
    return n


MIXES = [(1.0, 0), (1.0, 2), (1.5, 0), (1.5, 2), (2.0, 2)]  # (margin, smoothing) of the mixed chains


def mixed_window(head, draft, hidden, seq: list[int], g: int, margin: float, smooth: int) -> list[int]:
    """The head's chain where, at each word, the n-gram draft's word replaces the head's first choice when its
    hits / (total + smooth) is above margin x the head's probability (the head goes on from whichever word)."""
    window, token, ctx = [], seq[-1], list(seq[-4:])
    for _ in range(g):
        logits, hidden = head.step(hidden, token)
        z = np.exp(logits - logits.max())
        k = int(np.argmax(z))
        token, p = int(head.words[k]), float(z[k] / z.sum())
        w, _ = draft.window(ctx, 1)
        if w:
            t = draft.last
            if t.hits[draft.last_row] / (t.total[draft.last_row] + smooth) > margin * p:
                token = w[0]
        window.append(token)
        ctx = ctx[1:] + [token]
    return window


def main() -> int:
    from bench_smollm2_spec import PROBE_PROMPTS, PROBE_TO_EOT, PROBE_TOKENS, probe_setup, write_report
    from replay_speculation import answers

    from heron.runtime.metrics import machine

    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--corpus", nargs="+", required=True, help="folders of answers (.npz with prompt, tokens)")
        ap.add_argument("--min-total", type=int, default=2, help="drop contexts seen fewer times")

    a, lm, head = probe_setup(__doc__.split("\n\n")[0], extra=options)
    t0 = time.perf_counter()
    seqs = list(corpus(a.corpus))
    tables = count(seqs, min_total=a.min_total, vocab_size=lm.backend.vocab_size)
    draft = NgramDraft(tables)
    built = time.perf_counter() - t0
    n_words = sum(len(t) - s for t, s in seqs)
    print(f"corpus: {len(seqs)} answers, {n_words} words; tables {[(t.n, len(t.keys)) for t in draft.tables]} "
          f"in {built:.1f} s", flush=True)
    recs = answers(lm, PROBE_PROMPTS, PROBE_TOKENS, PROBE_TO_EOT)
    report = {"machine": machine(), "corpus": a.corpus, "answers": len(seqs), "words": n_words,
              "tables": {t.n: len(t.keys) for t in draft.tables}, "min_total": a.min_total, "G": G, "sets": {}}
    for name in PROBE_PROMPTS:
        rows = []
        for rec in (r for r in recs if r["set"] == name):
            seq = rec["prompt"] + rec["answer"]
            for p in range(len(rec["prompt"]) + 1, len(seq)):  # predicting seq[p]; the head reads hidden[p - 2]
                truth = seq[p:p + G]
                logits, _ = head.step(rec["hidden"][p - 2], seq[p - 1])
                z = np.exp(logits - logits.max())
                h_sure = float(z.max() / z.sum())
                hw = head.greedy(rec["hidden"][p - 2], seq[p - 1], G)
                nw, ns = draft.window(seq[:p], G)
                mixed = [held(mixed_window(head, draft, rec["hidden"][p - 2], seq[:p], G, m, smooth), truth)
                         for m, smooth in MIXES]
                rows.append((held(hw, truth), h_sure, held(nw, truth), ns[0] if ns else -1.0, len(nw), *mixed))
        r = np.array(rows)
        hh, hs, nh, ns, nl = r.T[:5]
        out = {"positions": len(r), "head_first_right": round(float(np.mean(hh >= 1)), 3),
               "head_held_per_window": round(float(hh.mean()), 3),
               "ngram_has_window": round(float(np.mean(nl > 0)), 3),
               "ngram_first_right": round(float(np.mean(nh >= 1)), 3),
               "ngram_held_per_window": round(float(nh.mean()), 3),
               "either_first_right": round(float(np.mean((hh >= 1) | (nh >= 1))), 3),
               "surer_drafts_held": round(float(np.where(ns > hs, nh, hh).mean()), 3),
               "best_of_both_held": round(float(np.maximum(hh, nh).mean()), 3)}
        for (m, smooth), col in zip(MIXES, r.T[5:]):
            out[f"mixed_held m={m} smooth={smooth}"] = round(float(col.mean()), 3)
        for s in (0.5, 0.7, 0.9):
            use = ns >= s
            out[f"ngram_at_{s}"] = {"share": round(float(use.mean()), 3),
                                    "first_right": round(float(np.mean(nh[use] >= 1)) if use.any() else 0.0, 3),
                                    "held_there_ngram_vs_head": [round(float(nh[use].mean()) if use.any() else 0.0, 3),
                                                                 round(float(hh[use].mean()) if use.any() else 0.0, 3)],
                                    "held_per_window": round(float(np.where(use, nh, hh).mean()), 3)}
        report["sets"][name] = out
        print(f"{name}: {json.dumps(out)}", flush=True)
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
