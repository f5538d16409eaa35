"""How a draft head would do in use, without timing noise (issue 25): its acceptance on SmolLM2's own answers to the
speculation benchmarks' prompts, how well its confidence predicts that acceptance, and the speed-ups that windows
and trees chosen by that confidence would give at the target's measured call costs.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/probe_draft_head.py --bundle runs/smol-i8h \\
        --out runs/probe-head.json

--bundle: a SmolLM2 export with a hidden output (`heron lm export smollm2 --compute int8 --out DIR`); --head: a
draft-head bundle (default: the shipped one; a head that fuses the target's middle layers gets their streams at
its first step, as in use). For the three prompts and the 20 varied prompts of
scripts/bench_smollm2_spec.py the target answers greedily (128 / 64 tokens); then, teacher-forced on that answer,
the head drafts from the target's true feature at every position: its top-4 at step 1 (and whether the target's
word is among them) and, chained from its own feature, step 2 after its first and its second choice.

Reported: top-k acceptance at steps 1 and 2; the calibration table (the head's probability of its first / second
choice against how often the target agrees); the target's cost of verifying T rows and of a head step, in plain
steps (measured here); and the predicted tokens per plain step of window policies: a fixed window of 1 or 2, the
window chosen per round by the head's confidence among {a1, a1 a2}, and trees over {a1, b1, c1, a2, b2, ba2}
(a1 / b1 / c1: the head's three first choices; a2 / b2: the first / second choice after a1; ba2: the first after
b1), each round picking the set with the most expected tokens per cost from the head's own probabilities (EAGLE-2's
dynamic tree), then scored with the target's real words. A tree needs tree attention in the target graph
(GroupQueryAttention's attention_bias and position_ids; not built): this says what it would buy first.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

OVERHEAD = 0.04  # Python's share of a round, in plain steps (cProfile: 6.8% of a chat round, session 20)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _rank(order: np.ndarray, want: int) -> int:
    hit = np.flatnonzero(order == want)
    return int(hit[0]) if len(hit) else 99


def record(lm, head, prompts: dict, tokens: dict, to_eot=frozenset()) -> list[dict]:
    from heron.runtime.decoding import GenerationOptions

    b = lm.backend
    slot = {int(w): i for i, w in enumerate(head.words)}
    out = []
    for name, qs in prompts.items():
        for q in qs:
            ids = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
            answer = [t.id for t in lm.generate(ids, GenerationOptions(max_new_tokens=tokens[name], stop_at_eot=name in to_eot))]
            b.reset()
            b.forward(ids + answer, last=len(answer) + 1)
            hs = [b.hidden_at(len(ids) - 1 + i) for i in range(len(answer))]  # hs[i] chose answer[i]
            streams = [b.streams_at(len(ids) - 1 + i) if head.stream_layers else None for i in range(len(answer))]
            for i in range(len(answer) - 2):
                logits, feat = head.step(hs[i], answer[i], streams[i])  # the head's guess of answer[i + 1]
                p = _softmax(logits)
                order = np.argsort(-p)[:4]
                r = {"set": name, "p": p[order].tolist(), "rank": _rank(order, slot.get(answer[i + 1], -1))}
                for j in range(2):  # step 2 after the head's first and second choice
                    p2 = _softmax(head.step(feat, int(head.words[order[j]]))[0])
                    o2 = np.argsort(-p2)[:3]
                    r[f"step2_{j}"] = {"p": p2[o2].tolist(), "rank": _rank(o2, slot.get(answer[i + 2], -1))}
                out.append(r)
    return out


def _nodes(r: dict) -> dict:
    """name -> (the head's probability of the path, its parent, whether the target's words follow that path)."""
    p1, s0, s1 = r["p"], r["step2_0"], r["step2_1"]
    return {"a1": (p1[0], None, r["rank"] == 0), "b1": (p1[1], None, r["rank"] == 1),
            "c1": (p1[2], None, r["rank"] == 2),
            "a2": (p1[0] * s0["p"][0], "a1", r["rank"] == 0 and s0["rank"] == 0),
            "b2": (p1[0] * s0["p"][1], "a1", r["rank"] == 0 and s0["rank"] == 1),
            "ba2": (p1[1] * s1["p"][0], "b1", r["rank"] == 1 and s1["rank"] == 0)}


def _round(nodes: dict, chosen, rows: dict, head_cost: float) -> tuple[float, float, int]:
    """(expected tokens from the head's probabilities, cost in plain steps, tokens the target really accepts)."""
    expected = 1 + sum(nodes[c][0] for c in chosen)
    expanded = {nodes[c][1] for c in chosen if nodes[c][1]}
    cost = rows[len(chosen) + 1] + head_cost * (1 + len(expanded)) + OVERHEAD
    got = 1
    if any(nodes[c][2] for c in chosen if nodes[c][1] is None):
        got += 1 + any(nodes[c][2] for c in chosen if nodes[c][1] is not None)
    return expected, cost, got


def policies(rows: dict, head_cost: float) -> dict:
    def best_of(allowed):
        def pick(r):
            nodes = {k: v for k, v in _nodes(r).items() if k in allowed}
            best, rate = ("a1",), -1.0
            for k in range(1, len(nodes) + 1):
                for combo in itertools.combinations(nodes, k):
                    if any(nodes[c][1] and nodes[c][1] not in combo for c in combo):
                        continue  # a tree: every node's parent is drafted too
                    e, c, _ = _round(nodes, combo, rows, head_cost)
                    if e / c > rate:
                        best, rate = combo, e / c
            return best
        return pick
    return {"window 1": lambda r: ("a1",), "window 2": lambda r: ("a1", "a2"),
            "confidence window <= 2": best_of({"a1", "a2"}), "confidence tree {a1,b1}": best_of({"a1", "b1"}),
            "confidence tree, 6 nodes": best_of({"a1", "b1", "c1", "a2", "b2", "ba2"})}


def main() -> int:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_smollm2_spec import PROBE_PROMPTS, PROBE_TO_EOT, PROBE_TOKENS, call_costs, probe_setup, write_report

    from heron.runtime.metrics import machine

    a, lm, head = probe_setup(__doc__.split("\n\n")[0])
    prompts = PROBE_PROMPTS
    recs = record(lm, head, prompts, PROBE_TOKENS, PROBE_TO_EOT)
    rows, head_cost = call_costs(lm, head, range(2, 8), 15)
    report = {"machine": machine(), "bundle": a.bundle, "head": a.head, "threads": a.threads,
              "rows_in_steps": {T: round(v, 3) for T, v in rows.items()}, "head_step_in_steps": round(head_cost, 4),
              "sets": {}, "calibration": []}
    print(f"verifying T rows, in plain steps: {report['rows_in_steps']}; a head step {head_cost:.3f}")
    pols = policies(rows, head_cost)
    for name in prompts:
        rs = [r for r in recs if r["set"] == name]
        rank = np.array([r["rank"] for r in rs])
        step2 = np.array([r["step2_0"]["rank"] for r in rs if r["rank"] == 0])
        row = {"positions": len(rs), "step1_topk": [round(float(np.mean(rank < k)), 3) for k in (1, 2, 3, 4)],
               "step2_after_a_right_first": [round(float(np.mean(step2 < k)), 3) for k in (1, 2)],
               "predicted_tokens_per_step": {}}
        for pname, pick in pols.items():
            got = cost = 0.0
            for r in rs:
                _, c, g = _round(_nodes(r), pick(r), rows, head_cost)
                got, cost = got + g, cost + c
            row["predicted_tokens_per_step"][pname] = round(got / cost, 3)
        report["sets"][name] = row
        print(f"{name}: {json.dumps(row)}")
    p1 = np.array([r["p"][0] for r in recs])
    first = np.array([r["rank"] == 0 for r in recs])
    for lo, hi in zip(np.arange(0, 1, 0.1), np.arange(0.1, 1.01, 0.1)):
        m = (p1 >= lo) & (p1 < hi + (1e-9 if hi > 0.99 else 0))
        report["calibration"].append({"confidence": [round(float(lo), 1), round(float(hi), 1)], "positions": int(m.sum()),
                                      "accepted": round(float(first[m].mean()), 3) if m.any() else None})
    print("calibration (the head's probability of its first choice -> how often the target agrees):",
          json.dumps(report["calibration"]))
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
