"""Prompt lookup's window policy (heron.runtime.decoding: LOOKUP_PRIOR, LOOKUP_LATER_PRIOR, LOOKUP_DECAY) replayed
on copy-heavy prompts that are not the speculation benchmarks' (issue 25): standard-library functions to edit and
return whole, and module docstrings to summarize reusing their wording, then the benchmarks' own sets as the check.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/replay_lookup_policy.py --bundle smollm2 --threads 2 \\
        --costs runs/replay.json --out runs/replay-lookup.json

Each (prior, decay) setting decodes every prompt again with head + prompt lookup (g <= 8) against
replay_speculation.py's Replay (the target's real answer and states), priced at --costs' call prices (a
replay_speculation.py report; without it, measured here). Reported: predicted speed-up over plain decoding and tokens
per target call, per prompt group. The tune set chooses; the benchmarks' sets only check.
"""
from __future__ import annotations

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
SETTINGS = [(0.6, 0.6, 0.9), (0.8, 0.8, 0.9), (0.9, 0.9, 0.9), (0.6, 0.8, 0.9), (0.6, 0.9, 0.9), (0.6, 0.95, 0.9),
            (0.7, 0.9, 0.9), (0.6, 0.9, 0.95)]  # (prior, later prior, decay); the first: before


def tune_prompts() -> dict[str, list[str]]:
    """Eight edits (every other function of EDIT_FUNCTIONS, templates in turn) and four summaries (each module
    docstring's first 900 characters, cut at a sentence)."""
    import importlib

    import draft_head_data as hd

    functions = hd.stdlib_functions(30, list(EDIT_FUNCTIONS))[::2][:8]
    edits = [EDIT_TEMPLATES[i % len(EDIT_TEMPLATES)].format(c=c) for i, c in enumerate(functions)]
    texts = []
    for name in SUMMARY_MODULES:
        doc = " ".join(importlib.import_module(name).__doc__.split())[:900]
        texts.append(SUMMARY_TEMPLATE.format(t=doc[:doc.rfind(". ") + 1] or doc))
    return {"tune: edits": edits, "tune: summaries": texts}


def main() -> int:
    from bench_smollm2_spec import PROBE_PROMPTS, PROBE_TO_EOT, PROBE_TOKENS, call_costs, probe_setup, write_report
    from replay_speculation import answers, policies, replay

    import heron.runtime.decoding as decoding
    from heron.runtime.decoding import GenerationOptions
    from heron.runtime.metrics import machine

    a, lm, head = probe_setup(__doc__.split("\n\n")[0], costs=True)
    tune = tune_prompts()
    check = {k: PROBE_PROMPTS[k] for k in ("code edit", "summary", "chat", "20 varied")}
    prompts = {**tune, **check}
    tokens = {**PROBE_TOKENS, **{k: 128 for k in tune}}
    recs = answers(lm, prompts, tokens, PROBE_TO_EOT)
    if a.costs:
        old = json.loads(Path(a.costs).read_text())
        rows, head_cost = {int(T): float(v) for T, v in old["rows_in_steps"].items()}, float(old["head_step_in_steps"])
    else:
        rows, head_cost = call_costs(lm, head, range(2, 10), 9)
    report = {"machine": machine(), "bundle": a.bundle, "threads": a.threads, "costs": a.costs,
              "rows_in_steps": rows, "settings": {}}
    before = (decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY)
    try:
        for prior, later, decay in SETTINGS:
            decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY = prior, later, decay
            gamma, make = policies(head, lambda: GenerationOptions(temperature=0.0))["head+lookup adaptive g<=8"]
            row = {}
            for name in prompts:
                tot = {"tokens": 0, "cost": 0.0, "calls": 0}
                for rec in (r for r in recs if r["set"] == name):
                    got = replay(rec, lm.backend, make, gamma, rows, head_cost)
                    for k in tot:
                        tot[k] += got[k]
                row[name] = {"speedup": round(tot["tokens"] / tot["cost"], 3),
                             "tokens_per_call": round(tot["tokens"] / tot["calls"], 3)}
            label = f"prior {prior} / {later}, decay {decay}"
            report["settings"][label] = row
            print(f"{label}: " + ", ".join(f"{k} {v['speedup']}x ({v['tokens_per_call']})" for k, v in row.items()),
                  flush=True)
    finally:
        decoding.LOOKUP_PRIOR, decoding.LOOKUP_LATER_PRIOR, decoding.LOOKUP_DECAY = before
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
