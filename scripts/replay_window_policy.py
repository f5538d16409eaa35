"""Speculation's window policies replayed on prompts that are not the speculation benchmarks' (issue 25): standard-
library functions to edit and return whole, module docstrings to summarize reusing their wording, and everyday chat
questions, then the benchmarks' own sets as the check. The tune sets choose; the benchmarks' sets only check.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/replay_window_policy.py --bundle smollm2 --threads 2 \
        --costs runs/replay.json [--sweep prior|ngram|head] [--ngram 3 2] --out runs/replay-windows.json

--sweep prior (the default): prompt lookup's LOOKUP_PRIOR / LOOKUP_LATER_PRIOR / LOOKUP_DECAY (heron.runtime.decoding;
PRIORS), head + prompt lookup (g <= 8), at the suffix lengths --ngram (longest, shortest; default:
decoding.LOOKUP_NGRAM). --sweep ngram: the suffix lengths prompt lookup searches (NGRAMS), head + lookup and lookup
alone (g <= 4). --sweep head: the head's greedy windows from the acceptance so far (the default) against windows from
its own probabilities (draft_head.CONFIDENT_WINDOWS). Every setting decodes every prompt again against
replay_speculation.py's Replay (the target's real answer and states; the rest of the policy as the working tree has
it), priced at --costs' call prices (a replay_speculation.py report; without it, measured here). Reported: predicted
speed-up over plain decoding and tokens per target call, per prompt group.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

EDIT_FUNCTIONS = ("textwrap", "shlex", "fnmatch", "colorsys")  # none of them the benchmarks' function
EDIT_TEMPLATES = ("Add type hints to this function and return the whole function:\n\n{c}",
                  "Add comments to this function and return the whole function:\n\n{c}",
                  "Rename the arguments of this function to clearer names and return the whole function:\n\n{c}")
SUMMARY_MODULES = ("difflib", "random", "heapq", "json")
SUMMARY_TEMPLATE = "Summarize this text in three sentences, reusing its wording:\n\n{t}"
TUNE_CHAT = ["How do I keep a basil plant alive indoors?", "What is a good routine for a lazy Sunday morning?",
             "Why do leaves change colour in autumn?",
             "Write a short thank-you note to a neighbour who watered my plants.",
             "How can I make my morning coffee taste better?", "What should I consider before adopting a dog?",
             "Why do we get goosebumps?", "Suggest three easy dinners for a busy weeknight."]  # answered to their end
PRIORS = [(0.6, 0.6, 0.9), (0.8, 0.8, 0.9), (0.9, 0.9, 0.9), (0.6, 0.8, 0.9), (0.6, 0.9, 0.9), (0.6, 0.95, 0.9),
          (0.7, 0.9, 0.9), (0.6, 0.9, 0.95)]  # (prior, later prior, decay); the first: before session 45
NGRAMS = [(3, 2), (3, 3), (4, 3), (4, 2), (5, 2), (6, 2), (8, 2)]  # (longest, shortest); the first: before session 45
CONFIDENT = "head+lookup adaptive g<=8, head windows from its own probabilities"  # replay_speculation.policies' A/B
POLICIES = {"prior": ("head+lookup adaptive g<=8",), "ngram": ("head+lookup adaptive g<=8", "lookup adaptive g<=4"),
            "head": ("head+lookup adaptive g<=8", CONFIDENT)}


def tune_prompts() -> dict[str, list[str]]:
    """Eight edits (every other function of EDIT_FUNCTIONS, templates in turn), four summaries (each module
    docstring's first 900 characters, cut at a sentence) and eight chat questions (TUNE_CHAT)."""
    import importlib

    import draft_head_data as hd

    functions = hd.stdlib_functions(30, list(EDIT_FUNCTIONS))[::2][:8]
    edits = [EDIT_TEMPLATES[i % len(EDIT_TEMPLATES)].format(c=c) for i, c in enumerate(functions)]
    texts = []
    for name in SUMMARY_MODULES:
        doc = " ".join(importlib.import_module(name).__doc__.split())[:900]
        texts.append(SUMMARY_TEMPLATE.format(t=doc[:doc.rfind(". ") + 1] or doc))
    return {"tune: edits": edits, "tune: summaries": texts, "tune: chat": TUNE_CHAT}


@contextlib.contextmanager
def lookup_settings(prior: tuple[float, float, float] | None = None, ngram: tuple[int, int] | None = None):
    """While in: prompt lookup with these priors (prior, later prior, decay) and suffix lengths (longest, shortest)."""
    from heron.runtime import decoding

    before = (decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY, decoding.LOOKUP_NGRAM)
    if prior is not None:
        decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY = prior
    if ngram is not None:
        decoding.LOOKUP_NGRAM = tuple(ngram)
    try:
        yield
    finally:
        decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY, decoding.LOOKUP_NGRAM = before


def main() -> int:
    from bench_smollm2_spec import (CHAT_SET, PROBE_PROMPTS, PROBE_TO_EOT, PROBE_TOKENS, call_costs, probe_setup,
                                    write_report)
    from replay_speculation import answers, policies, replay

    from heron.runtime.decoding import GenerationOptions
    from heron.runtime.metrics import machine

    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--sweep", choices=sorted(POLICIES), default="prior", help="what to vary")
        ap.add_argument("--ngram", type=int, nargs=2, default=None, metavar=("LONGEST", "SHORTEST"),
                        help="--sweep prior: the suffix lengths searched (default: decoding.LOOKUP_NGRAM)")

    a, lm, head = probe_setup(__doc__.split("\n\n")[0], costs=True, extra=options)
    if a.ngram is not None and not 1 <= a.ngram[1] <= a.ngram[0]:
        raise SystemExit(f"--ngram: LONGEST >= SHORTEST >= 1, got {a.ngram}")
    tune = tune_prompts()
    check = {k: PROBE_PROMPTS[k] for k in ("code edit", "summary", "chat", "20 varied", CHAT_SET)}
    prompts = {**tune, **check}
    tokens = {**PROBE_TOKENS, **{k: 128 for k in tune}, "tune: chat": 160}
    recs = answers(lm, prompts, tokens, PROBE_TO_EOT | {"tune: chat"})  # chat answered to its end, as CHAT_SET
    if a.costs:
        old = json.loads(Path(a.costs).read_text())
        rows, head_cost = {int(T): float(v) for T, v in old["rows_in_steps"].items()}, float(old["head_step_in_steps"])
    else:
        rows, head_cost = call_costs(lm, head, range(2, 10), 9)
    report = {"machine": machine(), "bundle": a.bundle, "threads": a.threads, "costs": a.costs, "sweep": a.sweep,
              "ngram": a.ngram, "rows_in_steps": rows, "settings": {}}
    if a.sweep == "prior":
        settings = [(f"prior {p} / {later}, decay {d}", {"prior": (p, later, d), "ngram": a.ngram})
                    for p, later, d in PRIORS]
    elif a.sweep == "ngram":
        settings = [(f"suffixes of {n} down to {m} words", {"ngram": (n, m)}) for n, m in NGRAMS]
    else:
        settings = [("the working tree's lookup", {})]
    for label, setting in settings:
        for policy in POLICIES[a.sweep]:
            with lookup_settings(**setting):
                gamma, make = policies(head, lambda: GenerationOptions(temperature=0.0))[policy]
                row = {}
                for name in prompts:
                    tot = {"tokens": 0, "cost": 0.0, "calls": 0}
                    for rec in (r for r in recs if r["set"] == name):
                        got = replay(rec, lm.backend, make, gamma, rows, head_cost)
                        for k in tot:
                            tot[k] += got[k]
                    row[name] = {"speedup": round(tot["tokens"] / tot["cost"], 3),
                                 "tokens_per_call": round(tot["tokens"] / tot["calls"], 3)}
            report["settings"][f"{label}, {policy}"] = row
            print(f"{label}, {policy}: " + ", ".join(f"{k} {v['speedup']}x ({v['tokens_per_call']})"
                                                     for k, v in row.items()), flush=True)
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
