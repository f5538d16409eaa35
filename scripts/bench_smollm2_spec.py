"""Speculation on SmolLM2-135M-Instruct (issue 25): plain decoding against prompt lookup, on heron's
onnxruntime bundles, in one run on this CPU.

    .venv/bin/python scripts/bench_smollm2_spec.py --bundles runs/smol-x2 runs/smol-i8 --out runs/bench-spec.json

Each bundle comes from `heron lm export smollm2 --out DIR [--compute int8|int8x2]`; `--bundles smollm2` runs the
model by name on heron.load_lm's default engine (the native decoder where it is built). Prompts: a code edit
(the model rewrites code it was given), a summary of a given text and a short chat question; greedy,
128 new tokens after the chat template, 1 thread. Per bundle, prompt and method: tokens/s (median of 3
interleaved runs; the prompt's prefill included), decode tokens/s (from each prompt's first word to its last: the
prefill, the same call for every method, left out), tokens per target call, and how many leading tokens equal plain decoding's. Speculation
is lossless with respect to the logits the verifying call computes, but onnxruntime's int8 MatMulNBits
quantizes activations differently for one row and for several (int8: logits differ by up to ~1 between
the two, both ~2 from fp32; int8x2: ~0.005), so a near-tie can resolve differently than in plain
decoding. Also the cost of verifying T tokens in one call, in plain steps (each call timed right after a 300-token
prefill, as every session before 51 measured it, and after 3 one-token steps, as calls follow each other in decoding:
"in a stream"), and per method the speed-up each table predicts (tokens / (plain steps + the cost of each verified
window)), the mean window and the acceptance per draft position. With --head, the row "head+lookup adaptive g<=8,
one price per token" sizes the windows with the target's one price per verified token where it tables its calls' prices (the native decoder's
verify_costs, since session 43): an A/B of the table; "head+lookup adaptive g<=8, head priced by the table" sizes
the head's windows with that table too (by default only prompt lookup's); "head+lookup adaptive g<=8, timed prices"
prices greedy windows by timing their rounds in use (decoding.RoundPrices, off by default: session 49) and prints
what a round of k draft words cost in use, in plain steps; "head+lookup adaptive g<=8, 4-bit head" runs the native
head with its projection and blocks re-rounded to 4 bits (DraftHead(bits=4)). `--compare-cost X` adds the adaptive lookup (and with --head the head + lookup at
g<=8) with the target's verify_cost set to X (its windows sized for that price). `--draft DIR` adds draft-model speculation (a draft bundle with SmolLM2's
tokenizer, e.g. the target's own weights exported with `--compute int8`: a self-draft that needs no training),
serial on the same thread budget, windows of 1 and 3. `--head DIR` adds speculation with a draft head on the
target's own hidden state (scripts/train_draft_head.py; windows of 1, 2 and the cost-aware adaptive window, and
the adaptive window with prompt lookup asked first: --speculative head's default, and that method again with its
windows sized from one acceptance rate pooled over every draft position, as before session 30: an A/B of
decoding.Acceptance).
An int8 bundle whose one-token calls are padded with a scratch token (runtime.lm.MIN_ROWS: graphs before session 27,
or a CPU where OnnxLM.one_row_exact fails) gets one more row, "plain, one-row kernel": plain decoding with the
faster one-row call, whose tokens may part from the padded path's at a near-tie (the speed-ups stay relative to the
padded plain decoding that speculation reproduces); an int8 bundle that runs one row (its attention padded) gets
"plain, scratch-token rows": the two-row steps every int8 graph took before session 27 (the speed-ups stay
relative to its own one-row plain decoding). A bundle whose graph pads attention also gets "plain, fast steps": plain
decoding with one-row attention (`heron lm generate --fast-steps`, OnnxLM.exact_steps False; its tokens may part from
plain decoding's at a near-tie), and every method's decode speed-up over it as well (`decode_speedup_vs_fast`): what
speculation gains over the fastest plain decoding of the same graph.
`--prompt-set varied` times the 20 varied prompts of --lossless (64 new tokens each, summed per method) instead
of the three prompts above. Those two sets decode a fixed number of words past the end of the answer (SmolLM2 then
writes a new turn of its own), as issue 24's decode speed is measured; `--prompt-set chat` times what a user of
`heron lm chat` receives: 8 chat questions, each answer up to its end-of-turn word (at most --new-tokens words),
summed per method. `--methods plain "head+lookup adaptive g<=8"` times only the named methods (and "plain, fast
steps", the second baseline, where the graph has it).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import statistics
import time
from pathlib import Path

import numpy as np

CODE = inspect.getsource(statistics.median)
TEXT = ("The heron is a long-legged freshwater and coastal bird in the family Ardeidae, with 72 recorded species. "
        "Herons wade in shallow water to catch fish, frogs and insects with their long, sharp bills. Most herons "
        "nest in colonies, often in trees near water, and both parents feed the chicks. The grey heron is common "
        "across Europe and Asia, while the great blue heron lives in North America. Herons fly with their necks "
        "drawn back in an S shape, unlike storks, cranes and spoonbills, which fly with their necks outstretched.")
PROMPTS = {
    "code edit": f"Rename the variable `data` to `values` in this function and return the whole function:\n\n{CODE}",
    "summary": f"Summarize this text in three sentences, reusing its wording:\n\n{TEXT}",
    "chat": "Explain what a hash table is in a few sentences.",
}
# --lossless: 20 varied prompts on which every lookup setting must give plain decoding's greedy tokens
LOSSLESS_PROMPTS = [
    "Write a Python function that reverses a string.", "What is the capital of France?",
    "Name three primary colours.", "Explain recursion in one sentence.", "What is 12 times 12?",
    "Say hello in Spanish.", "Give a synonym for 'happy'.", "What does CPU stand for?",
    "Write a haiku about autumn.", "How do I sort a list in Python?", "Why is the sky blue?",
    "Write a SQL query that counts the rows of a table named users.", "List the planets of the solar system.",
    "Translate 'thank you very much' into German.", "Give me three tips for a job interview.",
    f"Repeat this text exactly: {TEXT[:300]}", f"Add type hints to this function:\n\n{CODE}",
    "Write a JSON object describing a book with a title, an author and a year.",
    "Continue the sequence: 1, 2, 3, 4, 5, 6,", "Explain what a hash table is in a few sentences.",
]

# --prompt-set chat: everyday questions answered up to the end of the turn (none in the head's training prompts:
# tests/test_draft_head.py)
CHAT_PROMPTS = [
    "How do noise-cancelling headphones work?", "What should I pack for a weekend in the mountains?",
    "Why do cats purr?", "Suggest a name for a small bakery and explain your choice.",
    "How can I get better at remembering people's names?", "Why do onions make people cry?",
    "Write a short message congratulating a friend on a new baby.",
    "What are good ways to stay warm in winter without raising the heating bill?",
]

POOLED = "head+lookup adaptive g<=8, one pooled rate"
ORT_HEAD = "head+lookup adaptive g<=8, onnxruntime head"  # the head on onnxruntime beside a native target (A/B)
HEAD_4BIT = "head+lookup adaptive g<=8, 4-bit head"  # the native head's inner linears re-rounded to 4 bits (A/B)
# beside a target whose calls are priced by a table (NativeLM.verify_costs, since session 43): the same windows sized
# with one price per verified token (its verify_cost), as before
LINEAR = "head+lookup adaptive g<=8, one price per token"
# ... and the head's windows priced by that table too (by default only prompt lookup's are: session 43)
HEAD_TABLE = "head+lookup adaptive g<=8, head priced by the table"
# prompt lookup's later words from the first word's prior, as before session 45 (decoding.LOOKUP_LATER_PRIOR)
ONE_PRIOR = "head+lookup adaptive g<=8, lookup's later words at the first's prior"
# prompt lookup's suffixes of three words down to two, as before session 45 (decoding.LOOKUP_NGRAM)
SHORT_SUFFIX = "head+lookup adaptive g<=8, lookup from 3-word suffixes"
# the head's greedy windows sized by its own probabilities (draft_head.CONFIDENT_WINDOWS; by default from the
# acceptance of the rounds before)
CONFIDENT = "head+lookup adaptive g<=8, head windows from its own probabilities"
# greedy windows priced by timing their rounds in use (decoding.MEASURED_PRICES on; session 49, off by default); the
# run then prints what a round of each window cost in use, in plain steps
TIMED_PRICES = "head+lookup adaptive g<=8, timed prices"


@contextlib.contextmanager
def pooled_rates(on: bool):
    """Windows sized from one acceptance rate pooled over every position (how the drafters counted before session
    30) instead of decoding.Acceptance's first-position and later-position rates: an A/B of the estimator."""
    from heron.runtime.decoding import Acceptance
    two = Acceptance.rates
    Acceptance.rates = (lambda self: (self.pooled(),) * 2) if on else two
    try:
        yield
    finally:
        Acceptance.rates = two


@contextlib.contextmanager
def head_priced_by_table(target, on: bool):
    """While on: the draft head's windows are sized with the target's verify_costs table (decoding.best_window's
    costs), as prompt lookup's are, instead of one price per token: an A/B of that choice."""
    from heron.runtime import decoding, draft_head
    own = draft_head.best_window
    if on:
        table = decoding.verify_costs(target)
        draft_head.best_window = lambda *args, **kw: own(*args, **kw, costs=table)
    try:
        yield
    finally:
        draft_head.best_window = own


@contextlib.contextmanager
def lookup_one_prior(on: bool):
    """While on: prompt lookup's later words start from the first word's prior (before session 45) instead of
    decoding.LOOKUP_LATER_PRIOR: an A/B of that prior."""
    from heron.runtime import decoding
    own = decoding.LOOKUP_LATER_PRIOR
    if on:
        decoding.LOOKUP_LATER_PRIOR = decoding.LOOKUP_PRIOR
    try:
        yield
    finally:
        decoding.LOOKUP_LATER_PRIOR = own


@contextlib.contextmanager
def lookup_short_suffix(on: bool):
    """While on: prompt lookup searches suffixes of three words down to two (before session 45) instead of
    decoding.LOOKUP_NGRAM's: an A/B of the longer suffixes."""
    from heron.runtime import decoding
    own = decoding.LOOKUP_NGRAM
    if on:
        decoding.LOOKUP_NGRAM = (3, 2)
    try:
        yield
    finally:
        decoding.LOOKUP_NGRAM = own


@contextlib.contextmanager
def head_windows_from_confidence(on: bool):
    """While on: the head's greedy windows are sized by its own probabilities (decoding.confidence_window) instead of
    the acceptance of the rounds before: an A/B of draft_head.CONFIDENT_WINDOWS."""
    from heron.runtime import draft_head
    own = draft_head.CONFIDENT_WINDOWS
    if on:
        draft_head.CONFIDENT_WINDOWS = True
    try:
        yield
    finally:
        draft_head.CONFIDENT_WINDOWS = own


@contextlib.contextmanager
def timed_prices(on: bool):
    """While on: greedy windows are priced by timing their rounds (decoding.MEASURED_PRICES), not by the target's table
    alone: an A/B of RoundPrices."""
    from heron.runtime import decoding
    own = decoding.MEASURED_PRICES
    decoding.MEASURED_PRICES = on
    try:
        yield
    finally:
        decoding.MEASURED_PRICES = own


# (name, gamma, adaptive): fixed windows of up to g tokens, and the default cost-aware windows (best_window)
METHODS = [("plain", None, False), ("lookup g=1", 1, False), ("lookup g=3", 3, False),
           ("lookup adaptive g<=4", 4, True)]


_OTHER_HEADS: dict = {}
# rows whose draft head is the same bundle loaded otherwise than the default's: DraftHead's keyword arguments
OTHER_HEADS = {ORT_HEAD: {"engine": "onnxruntime"}, HEAD_4BIT: {"bits": 4}}


@contextlib.contextmanager
def other_head(lm, spec, m: str):
    """While the row m is one of OTHER_HEADS: the LanguageModel's draft head for spec is the same bundle loaded with
    that row's arguments (ORT_HEAD: in an onnxruntime session, one thread, where the default beside a native target
    runs it in the native library; HEAD_4BIT: its inner linears in 4 bits)."""
    if m not in OTHER_HEADS:
        yield
        return
    from heron.runtime.draft_head import DraftHead

    default = lm.draft_head(spec)
    key = next(k for k, v in lm._drafts.items() if v is default)
    if (key, m) not in _OTHER_HEADS:  # loaded once, outside the timing's first run
        _OTHER_HEADS[key, m] = DraftHead(default.folder, threads=1, target=lm.backend, **OTHER_HEADS[m])
    lm._drafts[key] = _OTHER_HEADS[key, m]
    try:
        yield
    finally:
        lm._drafts[key] = default


def _cost(cost: dict, T: int) -> float:
    """The measured time of a T-token call, linearly interpolated between the measured T (extrapolated past them)."""
    ts = sorted(cost)
    if T in cost:
        return cost[T]
    lo = max([t for t in ts if t < T], default=ts[0])
    hi = min([t for t in ts if t > T], default=ts[-1])
    if lo == hi:  # past the last measured T: the slope of the last two
        lo, hi = ts[-2], ts[-1]
    return cost[lo] + (cost[hi] - cost[lo]) * (T - lo) / (hi - lo)


def call_times(b, ctx: list[int], sizes, repeats: int, rng: np.random.Generator, stream: int = 0) -> dict:
    """Median seconds of one call of `b` verifying T random tokens (logits at each) after the context `ctx`, per T
    (each repeat times every T in turn: a VM's drift moves them together). stream 0: each call right after the
    context's prefill; stream k: each call after k one-token steps, as calls follow each other in decoding (the call
    then rewound; the context grows by k a call)."""
    ts = {T: [] for T in sizes}
    for _ in range(repeats):
        if stream:
            b.reset()
            b.forward(ctx, last=1)
        for T in sizes:
            if stream:
                for _ in range(stream):
                    b.forward([int(rng.integers(100, 20000))], last=1)
            else:
                b.reset()
                b.forward(ctx, last=1)
            t0 = time.perf_counter()
            b.forward(rng.integers(100, 20000, T).tolist(), last=T)
            ts[T].append(time.perf_counter() - t0)
            if stream:
                b.trim(T)
    return {T: statistics.median(v) for T, v in ts.items()}


# what the probes (scripts/probe_draft_head.py, scripts/replay_speculation.py) decode: the three prompts and the 20 varied
CHAT_SET = f"{len(CHAT_PROMPTS)} chat questions"  # answered to the end of the turn (at most 160 words)
PROBE_PROMPTS = {"code edit": [PROMPTS["code edit"]], "summary": [PROMPTS["summary"]], "chat": [PROMPTS["chat"]],
                 "20 varied": LOSSLESS_PROMPTS, CHAT_SET: CHAT_PROMPTS}
PROBE_TOKENS = {"code edit": 128, "summary": 128, "chat": 128, "20 varied": 64, CHAT_SET: 160}
PROBE_TO_EOT = {CHAT_SET}


def probe_setup(description: str, costs: bool = False, extra=None):
    """The probes' command line (--bundle, --head, --threads, --out; costs: --costs; extra(parser): a probe's own
    options) -> (args, the target, the draft head)."""
    ap = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(ap)
    ap.add_argument("--bundle", required=True, help="a SmolLM2 export with a hidden output (heron lm export smollm2 "
                                                    "--compute int8 --out DIR)")
    ap.add_argument("--head", default=None, help="a draft-head bundle (default: the shipped head)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    if costs:
        ap.add_argument("--costs", default=None, help="price calls as an earlier --out report did (its rows_in_steps and "
                                                      "head_step_in_steps) instead of measuring them: an A/B of heads")
        ap.add_argument("--free-verify", action="store_true",
                        help="price every call as one plain step whatever its length (the draft's own ceiling: what "
                             "speculation would give if verifying more words cost nothing)")
    a = ap.parse_args()
    import heron
    from heron.runtime.draft_head import DEFAULT_HEAD, DraftHead

    lm = heron.load_lm(a.bundle, threads=a.threads, prompt_cache=False)
    a.head = str(a.head or DEFAULT_HEAD)
    return a, lm, DraftHead(a.head, threads=a.threads, target=lm.backend)


def write_report(path: str | None, report: dict) -> None:
    """A probe's report as JSON at --out (nothing without one)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1))


def call_costs(lm, head, sizes, repeats: int) -> tuple[dict, float]:
    """The target's T-row call after a 300-token context (T in sizes) and a head step, in plain (one-token) steps."""
    rng = np.random.default_rng(0)
    t = call_times(lm.backend, rng.integers(100, 20000, 300).tolist(), (1, *sizes), repeats, rng)
    h = rng.standard_normal(head.manifest.dim).astype(np.float32)
    ts = []
    for i in range(100):
        t0 = time.perf_counter()
        head.step(h, 100 + i)
        ts.append(time.perf_counter() - t0)
    return {T: t[T] / t[1] for T in t}, statistics.median(ts) / t[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="+", required=True, help="folders of heron lm export smollm2")
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="words per prompt (default 128; --prompt-set chat: at most 160, each answer to its end of turn)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    ap.add_argument("--draft", default=None,
                    help="also draft-model speculation with this bundle as the draft (e.g. heron lm export smollm2 "
                         "--compute int8 --out DIR: the target's weights with one int8 row per token)")
    ap.add_argument("--head", default=None, help="also speculation with this draft-head bundle (scripts/train_draft_head.py)")
    ap.add_argument("--prompt-set", default="three", choices=["three", "varied", "chat"],
                    help="three: code edit, summary, chat (128 tokens); varied: the 20 prompts of --lossless (64 tokens); "
                         "chat: 8 chat questions, each answer to its end of turn (at most --new-tokens)")
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="time only these methods (plain always runs first), e.g. plain 'head+lookup adaptive g<=8'")
    ap.add_argument("--lossless", action="store_true",
                    help="only check that lookup (fixed and adaptive windows; and the draft with --draft) gives plain "
                         "decoding's greedy tokens on 20 varied prompts (64 new tokens each)")
    ap.add_argument("--compare-cost", type=float, default=None,
                    help="also the adaptive lookup (and with --head the head + lookup at g<=8) with the target's "
                         "verify_cost set to this value (an A/B of the window sizing: the target's own cost against "
                         "another)")
    ap.add_argument("--consistency-only", action="store_true",
                    help="only the verify cost and the block-vs-steps logit difference (seconds, not minutes)")
    ap.add_argument("--activations", default=None, choices=["int16", "int8"],
                    help="a native target's activations (NativeLM(activations=...); default int16)")
    ap.add_argument("--march", default=None,
                    help="a native target runs heron_lm.c built with this -march instead of this CPU's (x86-64-v3: "
                         "AVX2's kernels without VNNI; built into runs/bench-spec-native/)")
    a = ap.parse_args()
    import heron
    from heron.runtime.metrics import machine
    from heron.runtime.decoding import DecodeStats, GenerationOptions, SpeculativeOptions

    if a.new_tokens is None:
        a.new_tokens = 160 if a.prompt_set == "chat" else 128
    report = {"machine": machine(), "threads": a.threads, "new_tokens": a.new_tokens, "draft": a.draft, "bundles": {}}
    methods = METHODS + ([(f"draft g={g}", g, False) for g in (1, 3)] if a.draft else [])
    if a.head:
        methods += [("head g=1", 1, False), ("head g=2", 2, False), ("head adaptive g<=3", 3, True),
                    ("head+lookup adaptive g<=4", 4, True),  # --speculative head's default before session 22
                    ("head+lookup adaptive g<=8", 8, True),  # --speculative head's default
                    (POOLED, 8, True),  # the same with one acceptance rate for every position (before session 30)
                    (ORT_HEAD, 8, True),  # beside a native target: the head in onnxruntime, as before session 42
                    (HEAD_4BIT, 8, True),  # beside a native target: its projection and blocks in 4 bits
                    (LINEAR, 8, True),  # beside a target with a verify_costs table: windows priced without it
                    (HEAD_TABLE, 8, True),  # ... and the head's windows priced with it too
                    (ONE_PRIOR, 8, True),  # prompt lookup's later words at its first word's prior (before session 45)
                    (SHORT_SUFFIX, 8, True),  # prompt lookup from suffixes of three words down (before session 45)
                    (CONFIDENT, 8, True),  # the head's windows from its own probabilities
                    (TIMED_PRICES, 8, True)]  # windows priced by timing their rounds (session 49, off by default)
    priced = {f"lookup adaptive g<=4, verify_cost {a.compare_cost}"}
    if a.head:
        priced.add(f"head+lookup adaptive g<=8, verify_cost {a.compare_cost}")
    if a.compare_cost is not None:
        methods += [(m, 8 if m.startswith("head") else 4, True) for m in sorted(priced)]
    if a.methods:
        unknown = set(a.methods) - {m for m, _, _ in methods} - {"plain, one-row kernel", "plain, scratch-token rows",
                                                                 "plain, fast steps"}
        if unknown:
            ap.error(f"--methods: unknown {sorted(unknown)}; these run here: {[m for m, _, _ in methods]}")

    def spec_for(m: str, g: int | None, adaptive: bool):
        if g is None:
            return None
        if m.startswith("head"):
            return SpeculativeOptions(method="head", gamma=g, head=a.head, adaptive=adaptive, head_lookup="lookup" in m)
        if m.startswith("draft"):
            return SpeculativeOptions(method="draft", gamma=g, draft=a.draft, draft_threads=a.threads)
        return SpeculativeOptions(method="lookup", gamma=g, adaptive=adaptive)

    print(report["machine"])
    one_row, two_rows, fast = "plain, one-row kernel", "plain, scratch-token rows", "plain, fast steps"
    row_methods = {one_row: 1, two_rows: 2}
    for folder in a.bundles:
        lm = heron.load_lm(folder, threads=a.threads, prompt_cache=False)
        b = lm.backend
        if (a.march or a.activations) and getattr(b, "name", "") == "native":  # another build, or int8 activations
            from heron.runtime import native

            lib = None
            if a.march:
                flags = tuple(f"-march={a.march}" if f == "-march=native" else f for f in native.CFLAGS)
                out = Path(__file__).resolve().parents[1] / "runs" / "bench-spec-native"
                lib = native.build(out / f"{native.library_path().stem}-{a.march}.so", flags)
            lm.backend = b = native.NativeLM(b.path, threads=a.threads, library=lib,
                                             activations=a.activations or "int16")
        own_rows = getattr(b, "min_rows", 1)
        compute = (getattr(getattr(b, "manifest", None), "source", None) or {}).get("compute")  # native: none
        other = one_row if own_rows > 1 else (two_rows if compute == "int8" else None)
        fast_row = [(fast, None, False)] if getattr(b, "attention_rows", 1) > 1 else []  # graphs that pad attention
        bundle_methods = methods[:1] + ([(other, None, False)] if other else []) + fast_row + methods[1:]
        if a.methods:
            bundle_methods = bundle_methods[:1] + [x for x in bundle_methods[1:] if x[0] in a.methods or x[0] == fast]
        if a.lossless:
            opts = GenerationOptions(max_new_tokens=64, stop_at_eot=False)
            same = {m: 0 for m, g, _ in methods if g}  # lookup, and the draft's windows with --draft
            for q in LOSSLESS_PROMPTS:
                text = lm.chat_prompt([{"role": "user", "content": q}])
                ref = [t.id for t in lm.generate(text, opts)]
                for m, g, adaptive in methods:
                    if g:
                        same[m] += [t.id for t in lm.generate(text, opts, spec_for(m, g, adaptive))] == ref
            report["bundles"][folder] = {"lossless_prompts": len(LOSSLESS_PROMPTS), "equal_to_plain": same}
            print(f"{folder}: greedy tokens equal to plain decoding on {same} of {len(LOSSLESS_PROMPTS)} prompts")
            continue
        # the cost of one call verifying T tokens, in plain steps (after a 300-token context)
        rng = np.random.default_rng(0)
        ctx = rng.integers(100, 20000, 300).tolist()
        cost = call_times(b, ctx, tuple(range(1, 10)), 9, rng)  # 1-9 tokens: NativeLM.VERIFY_TABLES' windows
        # ... and each call after 3 one-token steps, as it follows them in decoding (S: a step right after a prefill
        # is slower than one in a stream of steps, so the first table understates the longer calls there)
        streamed = call_times(b, ctx, tuple(range(1, 10)), 9, rng, stream=3)
        # the same 4 positions as 4 one-token calls and as one 4-token call: how far apart their logits are
        nxt = rng.integers(100, 20000, 4).tolist()
        b.reset()
        b.forward(ctx, last=1)
        one = np.stack([b.forward([t], last=1)[0] for t in nxt])
        b.reset()
        b.forward(ctx, last=1)
        block = b.forward(nxt, last=4)
        rows = {"verify_cost_in_steps": {T: round(cost[T] / cost[1], 2) for T in cost},
                "verify_cost_in_steps_in_stream": {T: round(streamed[T] / streamed[1], 2) for T in streamed},
                "max_logit_diff_block_vs_steps": float(np.abs(one - block).max())}
        print(f"{folder}: verifying T tokens costs {rows['verify_cost_in_steps']} plain steps (each call after a "
              f"prefill), {rows['verify_cost_in_steps_in_stream']} (each after 3 steps); logits of a 4-token "
              f"call differ from 4 one-token calls by up to {rows['max_logit_diff_block_vs_steps']:.4f}")
        if a.consistency_only:
            report["bundles"][folder] = rows
            continue
        opts = GenerationOptions(max_new_tokens=a.new_tokens, stop_at_eot=False)
        prompt_set = PROMPTS
        if a.prompt_set == "varied":  # all 20 in one row per method: each run decodes every prompt once
            opts = GenerationOptions(max_new_tokens=64, stop_at_eot=False)
            prompt_set = {"20 varied prompts": LOSSLESS_PROMPTS}
        elif a.prompt_set == "chat":  # each answer to its end of turn: what a chat user receives
            opts = GenerationOptions(max_new_tokens=a.new_tokens, stop_at_eot=True)
            prompt_set = {CHAT_SET: CHAT_PROMPTS}
        for m in {m for m, _, _ in bundle_methods} & set(OTHER_HEADS):  # every head loaded before any timing
            with other_head(lm, spec_for(m, 8, True), m):
                pass
        for name, prompt in prompt_set.items():
            texts = [lm.chat_prompt([{"role": "user", "content": q}]) for q in ([prompt] if isinstance(prompt, str) else prompt)]
            times: dict[str, list[float]] = {m: [] for m, _, _ in bundle_methods}
            decode: dict[str, list[float]] = {m: [] for m, _, _ in bundle_methods}  # after each prompt's first word
            calls: dict[str, float] = {}
            detail: dict[str, dict] = {}
            agree: dict[str, int] = {}
            ref = None
            for _ in range(a.repeats):
                for m, g, adaptive in bundle_methods:
                    stats = DecodeStats(method=m)
                    spec = spec_for(m, g, adaptive)
                    if m == LINEAR:  # restored after: the target's table (None where it has none)
                        own_table, b.verify_costs = vars(b).get("verify_costs"), None
                    if m in priced:  # the A/B rows price windows differently
                        # restored after: a native target's own price (an attribute), a graph's table (None)
                        own_cost, b.verify_cost = vars(b).get("verify_cost"), a.compare_cost
                    if m in row_methods:
                        b.min_rows = row_methods[m]
                    if m == fast:
                        b.exact_steps = False
                    t0 = time.perf_counter()
                    with pooled_rates(m == POOLED), other_head(lm, spec, m), \
                            head_priced_by_table(b, m == HEAD_TABLE), lookup_one_prior(m == ONE_PRIOR), \
                            lookup_short_suffix(m == SHORT_SUFFIX), head_windows_from_confidence(m == CONFIDENT), \
                            timed_prices(m == TIMED_PRICES):
                        answers = [[t.id for t in lm.generate(text, opts, spec, stats)] for text in texts]
                    toks, lengths = [t for x in answers for t in x], [len(x) for x in answers]
                    times[m].append(time.perf_counter() - t0)
                    tt = stats.token_times
                    assert len(tt) == len(toks), (len(tt), len(toks))
                    starts = np.cumsum([0] + lengths[:-1])
                    decode[m].append(sum(tt[i + n - 1] - tt[i] for i, n in zip(starts, lengths)))
                    if m in priced:
                        b.verify_cost = own_cost
                    if m == LINEAR:
                        b.verify_costs = own_table
                    if m in row_methods:
                        b.min_rows = own_rows
                    if m == fast:
                        b.exact_steps = True
                    ref = toks if ref is None else ref  # plain decoding runs first
                    agree[m] = next((i for i, (x, y) in enumerate(zip(ref, toks)) if x != y), len(ref))
                    calls[m] = stats.tokens_per_target_call
                    # predicted speed-up from the measured verify costs: tokens / (plain steps + sum of cost(k + 1))
                    predicted = {}
                    for key, c in (("predicted_speedup", cost), ("predicted_speedup_in_stream", streamed)):
                        steps = (stats.target_calls - stats.rounds) + sum(_cost(c, k + 1) / c[1] for k in stats.windows)
                        predicted[key] = round(stats.generated / max(steps, 1e-9), 2)  # target calls only
                    detail[m] = {**predicted,
                                 "draft_time_share": round(stats.draft_time_s / max(times[m][-1], 1e-9), 2),
                                 "mean_window": round(float(np.mean(stats.windows)), 2) if stats.windows else 0.0,
                                 "rounds_per_call": round(stats.rounds / max(1, stats.target_calls), 2),
                                 "per_position_acceptance": [round(h / t, 2) for h, t in
                                                             zip(stats.position_hits, stats.position_tries) if t]}
            plain = statistics.median(times["plain"])
            plain_decode = statistics.median(decode["plain"])
            fast_decode = statistics.median(decode[fast]) if fast in decode else None
            res = {m: {"tokens_per_s": round(len(ref) / statistics.median(v), 1),
                       "speedup": round(plain / statistics.median(v), 2),
                       # without the prompt's prefill (the same call in every method): from each prompt's first word
                       # to its last, as issue 24's decode tokens/s
                       "decode_tokens_per_s": round((len(ref) - len(texts)) / statistics.median(decode[m]), 1),
                       "decode_speedup": round(plain_decode / statistics.median(decode[m]), 2),
                       **({"decode_speedup_vs_fast": round(fast_decode / statistics.median(decode[m]), 2)}
                          if fast_decode else {}),
                       "tokens_per_target_call": round(calls[m], 2), "same_tokens_as_plain": agree[m], **detail[m]}
                   for m, v in times.items()}
            rows[name] = res
            print(f"  {name:9s} " + "  ".join(f"{m}: {r['tokens_per_s']} tok/s ({r['speedup']}x; decode "
                                               f"{r['decode_tokens_per_s']} tok/s, {r['decode_speedup']}x"
                                               + (f", {r['decode_speedup_vs_fast']}x fast steps" if
                                                  "decode_speedup_vs_fast" in r else "") + "; predicted "
                                               f"{r['predicted_speedup']}x, in a stream {r['predicted_speedup_in_stream']}x; "
                                               f"{r['tokens_per_target_call']}/call, "
                                               f"window {r['mean_window']}, per position {r['per_position_acceptance']})"
                                               for m, r in res.items()))
        timed = getattr(b, "round_prices", None)  # what the timed-prices row's rounds measured in use
        if timed is not None and timed.plain_steps:
            rows["round_in_plain_steps"] = {src: {k: round(v, 2) for k, v in timed.measured(src, 3.0).items()}
                                            for src in sorted(timed.rounds)}
            print(f"  a round with k draft words, in plain steps as timed in use (the draft's proposal, the call, "
                  f"Python): {rows['round_in_plain_steps']}")
        report["bundles"][folder] = rows
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
