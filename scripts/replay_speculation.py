"""Speculation policies replayed on SmolLM2's own answers, without timing noise (issue 25): the engine's own
drafters and verify loop run against a target that replays the answer the real target gave, and each round is
priced at the target's measured call costs.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/replay_speculation.py --bundle runs/smol-i8s \\
        --out runs/replay.json

--bundle: a SmolLM2 export with a hidden output on the padded int8 graph (`heron lm export smollm2 --compute int8
--out DIR`), or `smollm2` (the native decoder where it is built, its windows priced by its table), whose blocks
compute exactly what its single steps do, so a greedy answer replayed is the answer any lossless method returns. For
the three prompts and the 20 varied prompts of scripts/bench_smollm2_spec.py the target answers greedily (128 / 64
tokens) and its hidden states along that answer come from one teacher-forced call; then every policy decodes again
against `Replay`, which answers each verify call with the real next words and the real hidden states, while the
draft head (the shipped one, or --head) drafts for real. Priced: a call of T tokens costs what the target's T-row
call costs in plain steps (measured here, after a 300-token context), a head step its measured share, and each
verify round OVERHEAD for Python's work around it; --free-verify prices every call as one step (the draft's own
ceiling).

Reported per prompt set and policy: tokens per plain step (the predicted speed-up over plain decoding), tokens
per target call, and the share of rounds that each draft source proposed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OVERHEAD = 0.04  # Python's share of a verify round, in plain steps (cProfile: 6.8% of a chat round, session 20)


class Replay:
    """A target that replays a known greedy answer: a call's logits are one-hot on the words that really follow
    each position (so verification accepts a draft word exactly where the real target would), hidden_at /
    streams_at return the real target's states for the positions the last call computed, and every call's
    length is recorded for pricing."""

    def __init__(self, backend, seq: list[int], hidden: np.ndarray, streams: np.ndarray | None):
        from heron.runtime.decoding import free_draft_tokens, verify_cost, verify_costs

        self.seq, self.hidden, self.streams_all = seq, hidden, streams
        self.vocab_size, self.max_len, self.end_ids = backend.vocab_size, backend.max_len, ()
        self.verify_cost, self.free_draft_tokens = verify_cost(backend), free_draft_tokens(backend)
        self.verify_costs = verify_costs(backend)  # the native decoder's table (None: one price per token)
        self.has_hidden, self.feature_layers = True, tuple(backend.feature_layers)
        self.length, self.calls, self._rows = 0, [], range(0)

    def reset(self) -> None:
        self.length, self._rows = 0, range(0)

    def reserve(self, positions: int) -> None:
        pass

    def trim(self, n: int) -> None:
        self.length -= n
        self._rows = range(self._rows.start, min(self._rows.stop, self.length))

    def forward(self, tokens: list[int], last: int | None = None) -> np.ndarray:
        self.length += len(tokens)
        self.calls.append(len(tokens))
        last = last or 1
        self._rows = range(self.length - last, self.length)
        out = np.zeros((last, self.vocab_size), np.float32)
        for i, pos in enumerate(self._rows):
            out[i, self.seq[pos + 1] if pos + 1 < len(self.seq) else 0] = 1.0
        return out

    def hidden_at(self, position: int) -> np.ndarray | None:
        return self.hidden[position] if position in self._rows else None

    def streams_at(self, position: int) -> np.ndarray | None:
        if self.streams_all is None or position not in self._rows:
            return None
        return self.streams_all[position]


class CountingHead:
    """The draft head with its steps counted (each is priced at the head's measured cost)."""

    def __init__(self, head):
        self.head, self.steps = head, 0
        self.words, self.stream_layers, self.manifest = head.words, head.stream_layers, head.manifest

    def step(self, *args, **kw):
        self.steps += 1
        return self.head.step(*args, **kw)

    def greedy(self, hidden, token, g, streams=None, prices=None):
        from heron.runtime.draft_head import greedy_steps

        window = self.head.greedy(hidden, token, g, streams, prices)
        self.steps += greedy_steps(len(window), g, prices)
        return window


def answers(lm, prompts: dict, tokens: dict, to_eot=frozenset()) -> list[dict]:
    """The target's greedy answers (those of the sets in to_eot up to their end of turn) and, from one
    teacher-forced call, its hidden states (and streams) along them."""
    from heron.runtime.decoding import GenerationOptions

    b, out = lm.backend, []
    for name, qs in prompts.items():
        for q in qs:
            ids = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
            answer = [t.id for t in lm.generate(ids, GenerationOptions(max_new_tokens=tokens[name], stop_at_eot=name in to_eot))]
            out.append({"set": name, **teacher_forced(b, ids, answer)})
    return out


def teacher_forced(backend, prompt: list[int], answer: list[int]) -> dict:
    """The record replay() takes: the target's hidden states (and streams) at every position of prompt + answer,
    from one call (on a graph whose blocks compute what its steps do, the states decoding saw)."""
    seq = list(prompt) + list(answer)
    backend.reset()
    backend.forward(seq, last=len(seq))
    hidden = np.stack([backend.hidden_at(i) for i in range(len(seq))])
    streams = np.stack([backend.streams_at(i) for i in range(len(seq))]) if backend.feature_layers else None
    return {"prompt": list(prompt), "answer": list(answer), "hidden": hidden, "streams": streams}


def replay(rec: dict, backend, make_drafter, gamma: int, rows: dict, head_cost: float) -> dict:
    """Decode rec's prompt again with the drafter make_drafter(target, stats) builds; -> its counts and price."""
    from heron.runtime.decoding import DecodeStats, GenerationOptions, drafted

    target = Replay(backend, rec["prompt"] + rec["answer"], rec["hidden"], rec["streams"])
    stats = DecodeStats(method="replay")
    drafter, head = make_drafter(target, stats)
    n = len(rec["answer"])
    got = [t.id for t in drafted(target, drafter, rec["prompt"], GenerationOptions(max_new_tokens=n, stop_at_eot=False),
                                 gamma, stats)]
    if got != rec["answer"]:
        raise RuntimeError("the replayed decoding parted from the target's answer: the policy is not lossless")
    calls = target.calls[1:]  # the prompt's prefill is the same for every method
    cost = sum(rows[min(T, max(rows))] for T in calls) + head_cost * (head.steps if head else 0) + OVERHEAD * stats.rounds
    # plain decoding: the prefill's call gives the first word, then one step per word
    return {"tokens": n - 1, "cost": cost, "calls": len(calls), "rounds": stats.rounds,
            "drafted": sum(stats.windows), "accepted": sum(stats.accepted)}


def policies(head_bundle, opts_factory) -> dict:
    """name -> (gamma, make_drafter(target, stats) -> (drafter, CountingHead or None))."""
    from heron.runtime.decoding import LookupDrafter, free_draft_tokens, verify_cost, verify_costs
    from heron.runtime import draft_head
    from heron.runtime.draft_head import DraftSeeds, HeadDrafter

    def head_lookup(lookup=True, confident=None):
        def make(target, stats):
            head = CountingHead(head_bundle)
            cost, free, costs = verify_cost(target), free_draft_tokens(target), verify_costs(target)
            first = LookupDrafter(target.vocab_size, stats, True, cost, free, costs) if lookup else None
            return HeadDrafter(target, head, opts_factory(), DraftSeeds(0), stats, True, cost, first, free, costs,
                               draft_head.CONFIDENT_WINDOWS if confident is None else confident), head
        return make

    def lookup_only(target, stats):
        return LookupDrafter(target.vocab_size, stats, True, verify_cost(target), free_draft_tokens(target),
                             verify_costs(target)), None

    return {"lookup adaptive g<=4": (4, lookup_only), "head adaptive g<=3": (3, head_lookup(lookup=False)),
            **{f"head+lookup adaptive g<={g}": (g, head_lookup()) for g in (4, 6, 8, 12)},
            "head+lookup adaptive g<=8, head windows from its own probabilities": (8, head_lookup(confident=True))}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_smollm2_spec import PROBE_PROMPTS, PROBE_TO_EOT, PROBE_TOKENS, call_costs, probe_setup, write_report

    from heron.runtime.decoding import GenerationOptions
    from heron.runtime.metrics import machine

    a, lm, head = probe_setup(__doc__.split("\n\n")[0], costs=True)
    recs = answers(lm, PROBE_PROMPTS, PROBE_TOKENS, PROBE_TO_EOT)
    pols = policies(head, lambda: GenerationOptions(temperature=0.0))
    if a.costs:  # an earlier report's prices: heads compared at the same costs, free of this run's timing noise
        old = json.loads(Path(a.costs).read_text())
        rows, head_cost = {int(T): float(v) for T, v in old["rows_in_steps"].items()}, float(old["head_step_in_steps"])
    else:
        rows, head_cost = call_costs(lm, head, range(2, max(g for g, _ in pols.values()) + 2), 9)
    if a.free_verify:
        rows = {T: 1.0 for T in rows}
    report = {"machine": machine(), "bundle": a.bundle, "head": a.head, "threads": a.threads,
              "free_verify": a.free_verify, "rows_in_steps": {T: round(v, 3) for T, v in rows.items()},
              "head_step_in_steps": round(head_cost, 4), "overhead_per_round": OVERHEAD, "sets": {}}
    print(f"a call of T rows, in plain steps: {report['rows_in_steps']}; a head step {head_cost:.3f}", flush=True)
    for name in PROBE_PROMPTS:
        row = {}
        for pname, (gamma, make) in pols.items():
            tot = {"tokens": 0, "cost": 0.0, "calls": 0, "rounds": 0, "drafted": 0, "accepted": 0}
            for rec in (r for r in recs if r["set"] == name):
                for k, v in replay(rec, lm.backend, make, gamma, rows, head_cost).items():
                    tot[k] += v
            row[pname] = {"speedup": round(tot["tokens"] / tot["cost"], 3),
                          "tokens_per_call": round(tot["tokens"] / tot["calls"], 3),
                          "accepted_per_drafted": round(tot["accepted"] / max(tot["drafted"], 1), 3)}
        report["sets"][name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
