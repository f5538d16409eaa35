"""Training data for a draft head on SmolLM2's own features: SmolLM2 answers a varied prompt set, and at every
position of its answers this keeps the head's input (the final norm's output, `hidden`), the token it chose
and its top-K next-token log-probabilities.

    .venv/bin/python scripts/draft_head_data.py --out runs/draft-head-data --shard 0/2   # and 1/2 beside it
    .venv/bin/python scripts/draft_head_data.py --out runs/draft-head-data --set 2      # more prompts (q*.npz)
    .venv/bin/python scripts/draft_head_data.py --out runs/draft-head-data --set 3      # everyday chat (r*.npz)
    .venv/bin/python scripts/draft_head_data.py --out runs/draft-head-data --set 4      # explanations (s*.npz)
    .venv/bin/python scripts/draft_head_data.py --out runs/head-data-f --bundle runs/smol-i8h --features --speculative

--features J,K records, besides the final feature, the residual streams after layers J, K (what an EAGLE-3 style
head fuses, models/lm/draft_head.py n_features): each answer is generated first (with --speculative: the shipped
draft head and prompt lookup, lossless: 1.3-1.8x faster on an int8 bundle, about even on int8x2) and then recorded
in one teacher-forced call of a graph with those outputs (heron.models.lm.draft_head.record_forced). --bundle DIR: the target that answers (an export of
`heron lm export smollm2`, e.g. --compute int8); by default SmolLM2's in-memory int8x2 graph.

Prompts: chat, instruction and code requests built from templates and topic lists written here, and
functions of the Python standard library to explain, document or rewrite (modules the speculation benchmarks
do not use). None of scripts/bench_smollm2_spec.py's or scripts/bench_smollm2.py's prompts are among them
(checked at start). Answers: greedy for even prompts, temperature 0.7 for odd ones (more varied contexts),
up to --new-tokens tokens after the chat template, on the default int8x2 graph (the target the head drafts
for). One .npz per prompt under --out (resumable: finished prompts are skipped); nothing is pickled.
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import random
import time
from pathlib import Path

import numpy as np

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "the French Revolution", "compound interest", "vaccines",
    "machine learning", "the stock market", "climate change", "volcanoes", "the human heart", "DNA",
    "electric cars", "the Roman Empire", "gravity", "the internet", "coffee", "sleep", "meditation",
    "renewable energy", "inflation", "the moon landing", "earthquakes", "bees", "chess", "jazz", "the Olympics",
    "public speaking", "time management", "budgeting", "learning a new language", "remote work", "gardening",
    "healthy breakfasts", "running a marathon", "saving money", "writing a resume", "making friends",
    "recycling", "rainforests", "the ocean", "dinosaurs", "the printing press", "democracy", "electricity",
    "magnets", "rainbows", "the seasons", "tides", "bread baking", "cloud computing", "encryption",
    "version control", "databases", "binary numbers", "linked lists", "sorting algorithms", "unit testing",
    "APIs", "operating systems", "memory leaks", "recursion in programming", "prime numbers", "fractions",
    "probability", "the Pythagorean theorem", "statistics", "supply and demand", "the immune system",
]
TEMPLATES = [
    "Explain {t} to a ten-year-old.", "What are the main facts about {t}?", "Give me three tips about {t}.",
    "Write a short paragraph about {t}.", "What are the pros and cons of {t}?", "Write a haiku about {t}.",
    "Summarize the history of {t} in a few sentences.", "What is a common misconception about {t}?",
    "Write a tweet about {t}.", "Ask me three quiz questions about {t} and give the answers.",
    "Write a short story that involves {t}.", "How would you teach {t} to a beginner?",
    "Describe {t} in five bullet points.", "Why does {t} matter?", "Write an email to a friend about {t}.",
]
CODE_TASKS = [
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number", "counts the vowels in a string",
    "merges two sorted lists", "removes duplicates from a list while keeping the order", "computes a factorial",
    "finds the largest number in a list", "converts Celsius to Fahrenheit", "reads a text file and counts its words",
    "flattens a nested list", "checks whether two strings are anagrams", "returns the GCD of two numbers",
    "validates an email address with a regular expression", "capitalizes every word in a sentence",
    "computes the average of a list of numbers", "groups words by their first letter", "implements binary search",
    "transposes a matrix given as a list of lists", "counts how often each character occurs", "reverses a linked list",
]
CODE_TEMPLATES = [
    "Write a Python function that {t}.", "Write a JavaScript function that {t}.",
    "Write a Python function that {t}, with a docstring and type hints.", "How would I write code that {t}?",
]
STDLIB_TEMPLATES = [
    "Explain what this Python function does:\n\n{c}", "Add a docstring to this function:\n\n{c}",
    "Rewrite this function with clearer variable names and return the whole function:\n\n{c}",
    "Write a unit test for this function:\n\n{c}",
]
# --set 2: more of the same kinds, none of set 1's prompts
TEMPLATES_2 = [
    "Tell me about {t}.", "What should a beginner know about {t}?", "Explain how {t} works, step by step.",
    "List five interesting facts about {t}.", "What are the benefits of {t}?", "Write a limerick about {t}.",
    "Give an example that shows {t} in everyday life.", "What questions do people often ask about {t}?",
    "Write a short dialogue between two friends about {t}.", "Describe {t} in one paragraph for a newsletter.",
    "What are three myths and three facts about {t}?", "How has {t} changed over the last century?",
]
CODE_TEMPLATES_2 = ["Show me Python code that {t}.", "Write a short Python program that {t} and explain it.",
                    "Write a Python function that {t}, and a test for it."]
STDLIB_MODULES_2 = ["textwrap", "statistics", "json", "string", "shlex", "fnmatch", "colorsys", "bisect", "heapq",
                    "calendar", "glob", "base64", "ipaddress", "fractions", "difflib", "html", "posixpath", "random"]
STDLIB_TEMPLATES_2 = ["Summarize what this code does in two sentences:\n\n{c}",
                      "Is there a bug in this function? Explain.\n\n{c}",
                      "Write an example call of this function and its result:\n\n{c}"]
# --set 3: everyday chat (advice, how-to, explanations, short writing) over new topics: the kind of answer where
# speculation gains least (no topic near a benchmark prompt: "a job interview" is left out)
TOPICS_3 = [
    "a garage sale", "a first day at a new job", "moving to a new city", "learning to cook", "planning a trip",
    "studying for exams", "a birthday party", "buying a used car", "starting a small business", "adopting a dog",
    "staying motivated", "a long flight", "a rainy weekend", "a team meeting", "asking for a raise",
    "a difficult conversation", "reading more books", "drinking more water", "a morning routine", "a road trip",
    "writing a cover letter", "learning to swim", "a wedding speech", "a job rejection", "a group project",
    "a noisy neighbour", "a picnic", "a houseplant", "a camping trip", "a podcast", "a museum visit",
    "a charity event", "online privacy", "phone addiction", "a healthy lunch", "a new hobby", "a family dinner",
]
TEMPLATES_3 = [
    "Give me some advice about {t}.", "What are five tips for {t}?", "How do I prepare for {t}?",
    "What mistakes should I avoid with {t}?", "Write a friendly message to a colleague about {t}.",
    "I'm nervous about {t}. What should I do?", "Make a short checklist for {t}.",
    "Explain in simple words how to handle {t}.", "Write two sentences of encouragement about {t}.",
    "What is the best way to deal with {t}?", "Plan a simple schedule for {t}.",
]
# --set 4: explanations, comparisons and definitions over topics of sets 1-3 and new ones
TOPICS_4 = [
    "a password manager", "a spreadsheet", "a search engine", "a web browser", "a compiler", "an interpreter",
    "a virtual machine", "a firewall", "a router", "a keyboard shortcut", "a backup", "a text editor",
    "a thermostat", "a battery", "a solar panel", "a bicycle gear", "a microwave oven", "a refrigerator",
    "a credit score", "a mortgage", "a savings account", "an index fund", "a tax return", "a receipt",
    "a metaphor", "a paragraph", "a thesis statement", "a bibliography", "a glacier", "a desert", "a comet",
    "a vaccine trial", "a calorie", "a protein", "a muscle", "a habit", "a deadline", "a to-do list",
]
TEMPLATES_4 = [
    "What is {t}? Answer briefly.", "How does {t} work?", "Describe {t} to someone who has never seen one.",
    "What is the difference between {t} and something similar?", "Why do people use {t}?",
    "Give an everyday example of {t}.", "What are the parts of {t}?",
]
STDLIB_MODULES = ["string", "shlex", "fnmatch", "colorsys", "bisect", "heapq", "calendar", "glob", "base64",
                  "ipaddress", "fractions", "difflib", "html", "keyword", "posixpath", "operator", "random"]


def stdlib_functions(max_lines: int = 30, modules=None) -> list[str]:
    import importlib
    out = []
    for name in modules or STDLIB_MODULES:
        mod = importlib.import_module(name)
        for _, f in inspect.getmembers(mod, inspect.isfunction):
            if f.__module__ != mod.__name__ or f.__name__.startswith("_"):
                continue
            try:
                src = inspect.getsource(f)
            except (OSError, TypeError):
                continue
            if 4 <= src.count("\n") <= max_lines:
                out.append(src)
    return out


def prompt_set(seed: int = 0, which: int = 1) -> list[str]:
    """Every prompt of set 1, 2 or 3, in a fixed shuffled order (shards take every n-th)."""
    if which == 4:
        prompts = [t.format(t=x) for t, x in itertools.product(TEMPLATES_4, TOPICS_4)]
        random.Random(seed + 3).shuffle(prompts)
        return prompts
    if which == 3:
        prompts = [t.format(t=x) for t, x in itertools.product(TEMPLATES_3, TOPICS_3)]
        random.Random(seed + 2).shuffle(prompts)
        return prompts
    if which == 2:
        prompts = [t.format(t=x) for t, x in itertools.product(TEMPLATES_2, TOPICS)]
        prompts += [t.format(t=x) for t, x in itertools.product(CODE_TEMPLATES_2, CODE_TASKS)]
        prompts += [t.format(c=c) for c, t in zip(stdlib_functions(40, STDLIB_MODULES_2)[::-1],
                                                   itertools.cycle(STDLIB_TEMPLATES_2))]
        random.Random(seed + 1).shuffle(prompts)
        return prompts
    prompts = [t.format(t=x) for t, x in itertools.product(TEMPLATES, TOPICS)]
    prompts += [t.format(t=x) for t, x in itertools.product(CODE_TEMPLATES, CODE_TASKS)]
    prompts += [t.format(c=c) for c, t in zip(stdlib_functions(), itertools.cycle(STDLIB_TEMPLATES))]
    random.Random(seed).shuffle(prompts)
    return prompts


def held_out() -> set[str]:
    """The benchmarks' prompts: never in the training set."""
    import importlib.util
    out = set()
    for script in ("bench_smollm2_spec.py", "bench_smollm2.py"):
        spec = importlib.util.spec_from_file_location(script[:-3], Path(__file__).with_name(script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name in ("PROMPTS", "LOSSLESS_PROMPTS", "QUESTIONS", "CHAT_PROMPTS"):
            v = getattr(mod, name, None)
            out.update(v.values() if isinstance(v, dict) else (v or []))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for one .npz per prompt (resumable)")
    ap.add_argument("--shard", default="0/1", help="i/n: this process answers every n-th prompt from the i-th")
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=60.0, help="stop starting new prompts after this long")
    ap.add_argument("--set", type=int, default=1, choices=[1, 2, 3, 4],
                    help="prompt set (files p*.npz / q*.npz / r*.npz / s*.npz)")
    ap.add_argument("--bundle", default="smollm2", help="the target that answers (default: SmolLM2 int8x2 in memory)")
    ap.add_argument("--features", nargs="?", const="default", default=None, metavar="J,K",
                    help="also record the residual streams after these layers (teacher-forced, one call per answer); "
                         "without J,K: the layers heron's graphs return (gguf_onnx.default_feature_layers: 2,14)")
    ap.add_argument("--speculative", action="store_true",
                    help="with --features: generate with the shipped draft head + prompt lookup (the same answers; faster "
                         "on an int8 --bundle)")
    a = ap.parse_args()
    import heron
    from heron.models.lm.draft_head import record_answer, record_forced
    from heron.runtime.decoding import GenerationOptions, SpeculativeOptions

    i, n = (int(v) for v in a.shard.split("/"))
    prompts = prompt_set(which=a.set)
    if a.set >= 2:
        before = set(prompt_set())  # once: each call reads the stdlib's sources again
        for k in range(2, a.set):
            before |= set(prompt_set(which=k))
        prompts = [p for p in prompts if p not in before]
    clash = held_out() & set(prompts)
    if clash:
        raise SystemExit(f"benchmark prompts in the training set: {sorted(clash)[:3]}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = heron.load_lm(a.bundle, threads=1)
    if a.features:
        from heron.export.gguf_onnx import build_graph
        from heron.paths import named_lm_path
        from heron.runtime.lm import state_names
        from heron.runtime.sessions import open_session

        from heron.export.gguf_onnx import default_feature_layers
        from heron.models.lm.gguf_file import config_from_gguf, open_reader

        layers = default_feature_layers(config_from_gguf(open_reader(named_lm_path("smollm2"))).n_layers) \
            if a.features == "default" else tuple(int(v) for v in a.features.split(","))
        compute = str(lm.backend.manifest.source.get("compute"))  # record what the answering graph computes
        graph, cfg, _, _ = build_graph(named_lm_path("smollm2"), compute, shared_cache=False, feature_layers=layers)
        recorder = open_session(graph.SerializeToString(), 1, ["CPUExecutionProvider"])
        state_inputs = state_names(cfg.n_layers)[0]
        spec = SpeculativeOptions(method="head") if a.speculative else None
    t0, done = time.time(), 0
    for j in range(i, len(prompts), n):
        path = out / f"{'pqrs'[a.set - 1]}{j:05d}.npz"
        if path.exists():
            continue
        if time.time() - t0 > a.minutes * 60:
            break
        ids = lm.encode(lm.chat_prompt([{"role": "user", "content": prompts[j]}]))
        if a.features:
            opts = GenerationOptions(max_new_tokens=a.new_tokens, temperature=0.7 if j % 2 else 0.0, seed=j)
            toks = [t.id for t in lm.generate(ids, opts, spec)]
            rec = record_forced(recorder, state_inputs, cfg.n_kv_heads, cfg.head_dim, ids, toks)
        else:
            rec = record_answer(lm.backend, ids, a.new_tokens, 0.7 if j % 2 else 0.0, np.random.default_rng(j))
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **rec)
        tmp.rename(path)
        done += len(rec["tokens"])
        print(f"{j} {len(rec['tokens'])} tokens, {done} in all, {done / (time.time() - t0):.1f}/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
