"""A conversation with SmolLM2 on heron's native decoder (or onnxruntime's default graph, --engine onnx), with the
prompt cache and without: how long each turn waits for its first word, and the conversation's time
(LanguageModel.prompt_cache; decoding.start_cache).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_chat_turns.py --threads 2 [--rounds 3] [--new-tokens 96]
        [--engine native|onnx] [--out runs/chat-turns.json]

One conversation: the 8 chat questions of scripts/bench_smollm2_spec.py asked one after the other, each answered (at
most --new-tokens words, greedy) with the turns before it in the prompt, as `heron lm chat` does. Each round holds it
once per (method, cache) in turn, the cache on and off alternating which goes first, every conversation from an empty
cache; methods: plain decoding and the CLI's default where it drafts (--speculative auto: the draft head with prompt
lookup on the native decoder). Per turn: the prompt's tokens, the tokens the cache kept, the time to the first word
(median over rounds); per conversation: the sum of those waits and the whole time, and whether the cache's answers were
the words without it (they must be). Nothing is written but --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2_spec import CHAT_PROMPTS, write_report  # noqa: E402


def conversation(lm, spec, opts, cache: bool):
    """The questions one after the other -> per turn (prompt tokens, tokens kept, seconds to the first word), the
    answers' ids, the whole time."""
    import heron

    lm.prompt_cache = cache
    lm.backend.reset()  # every conversation from an empty cache
    messages, turns, answers = [], [], []
    start = time.perf_counter()
    for q in CHAT_PROMPTS:
        messages.append({"role": "user", "content": q})
        n_prompt = len(lm.encode(lm.chat_prompt(messages)))
        stats = heron.DecodeStats()
        t0, first, ids, text = time.perf_counter(), None, [], []
        for t in lm.chat(messages, opts, spec, stats):
            if first is None:
                first = time.perf_counter() - t0
            ids.append(t.id)
            text.append(t.text)
        messages.append({"role": "assistant", "content": "".join(text)})
        turns.append((n_prompt, stats.prompt_cached, first))
        answers.append(ids)
    return turns, answers, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--engine", default="native", choices=["native", "onnx"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import heron
    from heron.runtime.metrics import machine

    lm = heron.load_lm("smollm2", threads=a.threads, engine=a.engine)
    opts = heron.GenerationOptions(max_new_tokens=a.new_tokens)
    methods = {"plain": None}
    auto = lm.auto_speculation()  # None where the CLI decodes plainly (onnxruntime)
    if auto is not None:
        methods["auto (head + lookup)"] = auto
    conversation(lm, None, heron.GenerationOptions(max_new_tokens=4), True)  # one-time costs out of the timings
    runs = {(m, c): [] for m in methods for c in (True, False)}
    for r in range(a.rounds):
        for m, spec in methods.items():
            for cache in ((True, False) if r % 2 == 0 else (False, True)):
                runs[m, cache].append(conversation(lm, spec, opts, cache))
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "engine": lm.backend.name,
              "threads": a.threads, "rounds": a.rounds,
              "new_tokens": a.new_tokens, "methods": {}}
    print(f"{report['machine']}; {lm.backend.name}, {a.threads} thread(s); {len(CHAT_PROMPTS)} turns, answers of at most {a.new_tokens} "
          f"words; medians of {a.rounds} rounds")
    for m in methods:
        on, off = runs[m, True], runs[m, False]
        same = all(x[1] == y[1] for x in on for y in off)
        rows = []
        for i in range(len(CHAT_PROMPTS)):
            n_prompt, kept = on[0][0][i][0], on[0][0][i][1]
            t_on = statistics.median(x[0][i][2] for x in on)
            t_off = statistics.median(x[0][i][2] for x in off)
            rows.append({"turn": i + 1, "prompt_tokens": n_prompt, "kept": kept, "first_word_ms_cache": t_on * 1e3,
                         "first_word_ms_no_cache": t_off * 1e3})
        wait_on = statistics.median(sum(t[2] for t in x[0]) for x in on)
        wait_off = statistics.median(sum(t[2] for t in x[0]) for x in off)
        whole_on, whole_off = statistics.median(x[2] for x in on), statistics.median(x[2] for x in off)
        report["methods"][m] = {"turns": rows, "waits_s": {"cache": wait_on, "no_cache": wait_off},
                                "conversation_s": {"cache": whole_on, "no_cache": whole_off},
                                "same_words": same}
        print(f"\n{m}: the same words with and without the cache: {same}")
        print("turn  prompt  kept  first word ms: cache / none")
        for row in rows:
            print(f"{row['turn']:4}  {row['prompt_tokens']:6}  {row['kept']:4}  "
                  f"{row['first_word_ms_cache']:8.1f} / {row['first_word_ms_no_cache']:8.1f}")
        print(f"waits for the first words, summed: {wait_on:.2f} s / {wait_off:.2f} s ({wait_off / wait_on:.1f}x); "
              f"the conversation: {whole_on:.2f} s / {whole_off:.2f} s ({whole_off / whole_on:.2f}x)")
    write_report(a.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
