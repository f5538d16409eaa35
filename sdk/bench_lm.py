"""`heron lm bench`: speed and acceptance of every decoding method on held-out prompts.

All methods get the same thread budget, each used as well as the method can: plain decoding, MTP, lookup,
the head and classic draft SD run the target with all `threads` (draft SD is serial: its draft, one
onnxruntime thread, runs between the target's calls, so the target verifies on the whole budget; a draft on
two threads ran slower here, its pool contending with torch's); Mirror-SD runs the draft beside the target,
so the target gets threads - 1 and the draft one thread of its own. Greedy decoding by default, so every method's
output is also checked against plain decoding token for token (lossless), and the run fails loudly if one
differs; with a temperature (and top-p) every method samples, each prompt from its own seed (its index), and the
rows say "-" for lossless: sampled speculation keeps the target's distribution, not plain decoding's draws
(tests/test_speculative.py and tests/test_smollm2_sampling.py test that distribution).

Reported per method: tokens/s, p50/p95 inter-token latency, accepted draft tokens per round (the
bonus/correction token not counted) and tokens per target forward (counted), per-position acceptance,
beta (cost of verifying a block of gamma + 1 tokens relative to one decoding step), c (one draft step
relative to one target step), and the measured speedup against the predicted one (`predicted_serial`,
`predicted_overlapped`): E = (1 - a^(g+1)) / (1 - a) tokens per round; draft SD serial, E / (beta + g c) plain steps;
Mirror-SD a round of max(verify, (g + 1) draft steps), both timed beside each other as they run, plus (1 - r) g draft
steps alone for the rounds whose prepared branch is not reused (r: the measured branch reuse), over a plain step at
the whole budget.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from heron.lm import LanguageModel, load_lm
from heron.runtime import decoding as sp
from heron.runtime import mirror as ms
from heron.runtime.metrics import machine


PROMPT_SETS = ("held-out", "chat")
MIRROR_WINDOWS = ("ahead", "fixed")  # BenchOptions.mirror_windows
# --prompt-set chat: what a chat user asks (code, explanations, advice, writing), none of them in a draft head's
# training prompts or in another benchmark's set
CHAT_QUESTIONS = (
    "Write a Python function that counts the vowels in a string.",
    "Explain what a linked list is in a few sentences.",
    "How do I make a good cup of tea?",
    "Why is the sky blue?",
    "Give me three ideas for a rainy afternoon with kids.",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a colleague who helped me move.",
    "How does a refrigerator keep food cold?",
    "What are the benefits of learning a second language?",
    "Explain recursion to a ten-year-old.",
    "How should I prepare for a job interview?",
    "Write a haiku about autumn leaves.",
)


def chat_prompts(lm: LanguageModel, n: int) -> list[list[int]]:
    """The first n CHAT_QUESTIONS as token ids in the model's chat template (a one-line error for a model without one)."""
    return [lm.encode(lm.chat_prompt([{"role": "user", "content": q}])) for q in CHAT_QUESTIONS[:n]]


@dataclass
class BenchOptions:
    prompts: int = 12
    prompt_tokens: int = 32
    new_tokens: int = 48
    threads: int = 2
    gamma: int | tuple[int, ...] | None = None  # draft tokens per round (None: each method's own,
    # runtime.decoding.DEFAULT_GAMMA); several: draft SD and Mirror-SD run at each, a row per window (the other methods
    # at their own), and each is compared with the fastest draft SD row (each method at its best window)
    kappa: int | None = None       # Mirror-SD: None: 2 with an exit head trained for exit_layer, else 0
    exit_layer: int = 2
    methods: tuple[str, ...] = ("none", "draft", "mtp", "mirror", "lookup")
    target_device: str = "cpu"
    repeats: int = 3               # runs of every method, interleaved; tokens/s is their median (min and max kept)
    decode_preset: str = "small"   # the 1-thread decode-speed baseline model (random weights: speed only)
    compute: str | None = None     # GGUF files and named models: load_lm's compute (onnxruntime: int8 the fastest graph; engine native: int8 activations)
    engine: str = "auto"           # GGUF files and named models: load_lm's engine (torch: the fp32 target Mirror-SD needs)
    mirror_windows: tuple[str, ...] = ("ahead",)  # Mirror-SD rows: ahead (greedy, kappa 0: windows as the draft
    # writes them beside the target's verify, SpeculativeOptions.fixed_windows False) and / or fixed (windows of gamma)
    prompt_set: str = "held-out"   # held-out: the first prompt_tokens tokens of held-out standard-library docs, continued
    # as plain text; chat: CHAT_QUESTIONS in the model's chat template, answered to the end of the turn (or new_tokens)
    temperature: float = 0.0       # 0: greedy, every method's tokens checked against plain decoding's; else sampled
    top_p: float = 1.0             # nucleus sampling (with a temperature)
    top_k: int = 0                 # the k likeliest tokens only (with a temperature; 0: all)
    min_p: float = 0.0             # min-p sampling (with a temperature; 0: off)

    def __post_init__(self):
        if self.prompt_set not in PROMPT_SETS:
            raise ValueError(f"prompt_set must be one of {', '.join(PROMPT_SETS)}, got {self.prompt_set!r}")
        if self.prompt_set == "chat" and not 1 <= self.prompts <= len(CHAT_QUESTIONS):
            raise ValueError(f"the chat prompt set has {len(CHAT_QUESTIONS)} questions; --prompts {self.prompts} asks "
                             "for more")
        if not self.mirror_windows or len(set(self.mirror_windows)) != len(self.mirror_windows) or \
                not set(self.mirror_windows) <= set(MIRROR_WINDOWS):
            raise ValueError(f"mirror_windows must be distinct values among {', '.join(MIRROR_WINDOWS)}, got "
                             f"{list(self.mirror_windows)}")
        sp.GenerationOptions(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                             min_p=self.min_p)  # refuses bad values in one line
        unknown = [m for m in self.methods if m not in sp.METHODS]
        if unknown or not self.methods:  # checked before any method runs, not after the first ones took minutes
            raise ValueError(f"methods must be among {', '.join(sp.METHODS)}, got {list(self.methods) or 'none'}")
        if isinstance(self.gamma, (list, tuple)):
            if not self.gamma or len(set(self.gamma)) != len(self.gamma) or not all(
                    isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in self.gamma):
                raise ValueError(f"gamma must be distinct integers >= 1, got {list(self.gamma)}")
            self.gamma = self.gamma[0] if len(self.gamma) == 1 else tuple(self.gamma)
            if isinstance(self.gamma, tuple) and not {"draft", "mirror"} & set(self.methods):
                raise ValueError(f"several gamma values run draft and mirror at each; the methods are "
                                 f"{', '.join(self.methods)} (give one gamma)")

    def variants(self, method: str) -> list[tuple[int | None, str | None]]:
        """(window, Mirror-SD's windows or None) of every row `method` runs."""
        return [(g, w) for g in self.windows(method) for w in (self.mirror_windows if method == "mirror" else (None,))]

    def windows(self, method: str) -> tuple[int | None, ...]:
        """The windows `method` runs at: every one of several gammas for draft SD and Mirror-SD, else the one gamma
        (None: the method's own)."""
        if isinstance(self.gamma, tuple):
            return self.gamma if method in ("draft", "mirror") else (None,)
        return (self.gamma,)


# heron lm bench --peers: heron's onnxruntime graphs (int8 with exact steps and with one-row steps, int8x2), its native
# decoder (heron.runtime.native), its torch
# fp32 path, `transformers`, llama.cpp and ONNX Runtime GenAI on SmolLM2 (scripts/bench_smollm2.py; issue 24's three
# prompts, prefill, peak RSS, agreement)
PEER_BACKENDS = ("onnx:int8", "onnx:int8-fast", "onnx:int8x2", "native", "torch", "transformers", "llama.cpp",
                 "ort-genai")
PEER_BUILDS = {  # side build -> (script under scripts/peers, the file it leaves under PEERS_DIR when done)
    "llama.cpp (llama-cpp-python compiled from source: 25-45 min on 2 cores, once)": (
        "lm_peers.sh", "lm-peers-venv/bin/python"),
    "ONNX Runtime GenAI (its venv and its int4 model of SmolLM2, built by its builder: a few minutes, once)": (
        "genai_peers.sh", "smol-genai/genai_config.json")}


def peers_plan(root: Path, out: Path, threads: tuple[int, ...], rounds: int, python: str,
               command: str | None = None) -> list[tuple[str, list[str], dict]]:
    """`heron lm bench --peers` as the commands it runs, in order: -> [(what, argv, environment)]. The peers'
    side builds missing under OUT/peers (scripts/peers/*.sh with PEERS_DIR there: nothing enters heron's venv,
    and a later run with the same --out reuses them), then scripts/bench_smollm2.py for PEER_BACKENDS at each
    thread count, interleaved `rounds` times, into OUT (results.json, table.md). Everything is written under OUT.
    The scripts come with a source checkout of heron (`root`); an installed wheel has none. `command`: what the
    user ran, which the table names (HERON_BENCH_COMMAND)."""
    import os

    bench = root / "scripts" / "bench_smollm2.py"
    if not bench.is_file():
        raise ValueError(f"heron lm bench --peers runs scripts/bench_smollm2.py from a source checkout of heron; "
                         f"there is none at {root}")
    out = out.resolve()
    peers = out / "peers"
    env = {**os.environ, "PEERS_DIR": str(peers), "HERON_PYTHON": python}
    if command:
        env["HERON_BENCH_COMMAND"] = command
    plan = [(f"building {what}", ["bash", str(root / "scripts" / "peers" / script)], env)
            for what, (script, done) in PEER_BUILDS.items() if not (peers / done).is_file()]
    plan.append((f"measuring {', '.join(PEER_BACKENDS)} at {' and '.join(map(str, threads))} thread(s)",
                 [python, str(bench), "--out", str(out), "--threads", *map(str, threads), "--rounds", str(rounds),
                  "--backends", ",".join(PEER_BACKENDS), "--peers-dir", str(peers)], env))
    return plan


def run_peers(plan: list[tuple[str, list[str], dict]], log=print) -> int:
    """Run peers_plan's commands; a side build that fails is reported and the measurement goes on (its peer's row
    then says "not built"); -> the measurement's exit status."""
    import subprocess

    code = 0
    for what, argv, env in plan:
        Path(env["PEERS_DIR"]).mkdir(parents=True, exist_ok=True)  # OUT/peers (OUT too)
        log(f"heron lm bench --peers: {what}", flush=True)
        code = subprocess.run(argv, env=env).returncode
        if code and what.startswith("building"):
            log(f"heron lm bench --peers: that build failed (exit {code}); its peer is left out", flush=True)
    return code


def held_out_prompts(tok, n: int, length: int) -> list[list[int]]:
    from heron.models.lm import corpus

    docs = [d for d in corpus.stdlib_documents() if d.held_out]
    out = []
    for d in docs:
        ids = tok.encode(d.text)
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == n:
            break
    return out


def _time_call(fn, reps: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def method_threads(method: str, budget: int) -> int:
    """The target's threads for `method` out of a budget of `budget` CPU threads: Mirror-SD leaves one to the draft
    running beside the target; every other method (draft SD included: its draft runs between the target's calls)
    gives the target the whole budget."""
    return max(1, budget - 1) if method == "mirror" else budget


def _beside(fn, other, reps: int = 20) -> float:
    """Seconds of one call of fn while `other` runs in a loop on a thread of its own (as Mirror-SD runs its draft
    beside its target: both compete for the memory bus and caches, so each is slower than alone)."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            other()
    worker = threading.Thread(target=loop, name="heron-bench-beside", daemon=True)
    worker.start()
    try:
        return _time_call(fn, reps)
    finally:
        stop.set()
        worker.join()


def step_costs(lm: LanguageModel, draft, gamma: int, context: int, threads: int, beside: bool = False) -> dict:
    """Seconds of one target decoding step, one target verify of gamma + 1 tokens, one draft step; beside: the
    target's timed while the draft decodes on another thread and the draft's while the target verifies (Mirror-SD),
    else each alone."""
    import torch

    torch.set_num_threads(threads)
    t = lm.backend
    ctx = list(range(1, context + 1))

    def target_step(n):
        def f():
            t.forward(ctx[:n])  # after `context` cached positions
            t.trim(n)
        return f
    t.reset()
    t.forward(ctx)
    d = None
    if draft is not None:
        draft.reset()
        draft.forward(ctx)
        base = draft.snapshot()

        def d():
            draft.restore(base)
            draft.forward([5])
    if beside and d is not None:
        one, block = _beside(target_step(1), d), _beside(target_step(gamma + 1), d)
    else:
        one, block = _time_call(target_step(1)), _time_call(target_step(gamma + 1))
    out = {"target_step_s": one, "verify_s": block, "beta": block / one, "beside": bool(beside and d is not None)}
    if d is not None:
        out["draft_step_s"] = _beside(d, target_step(gamma + 1)) if beside else _time_call(d)
        out["c"] = out["draft_step_s"] / one
    return out


def run_method(lm: LanguageModel, spec, prompts, opts: sp.GenerationOptions, method: str) -> tuple[dict, list[list[int]]]:
    outs, lat, stats_all = [], [], []
    t_total, n_total = 0.0, 0
    for i, p in enumerate(prompts):
        st = sp.DecodeStats(method=method)
        seeded = replace(opts, seed=i) if opts.temperature > 0 else opts  # every method draws from the same seeds
        t0 = time.perf_counter()
        ids = [t.id for t in lm.generate(p, seeded, spec, st)]
        dt = time.perf_counter() - t0
        t_total += dt
        n_total += len(ids)
        times = [t0] + st.token_times
        lat += list(np.diff(times))
        outs.append(ids)
        stats_all.append(st)
    row = {"method": method, "tokens_per_s": n_total / t_total,
           "p50_token_ms": 1e3 * float(np.percentile(lat, 50)), "p95_token_ms": 1e3 * float(np.percentile(lat, 95))}
    acc = [a for s in stats_all for a in s.accepted]
    if acc:
        tries = np.sum([np.pad(s.position_tries, (0, 16))[:16] for s in stats_all], 0)
        hits = np.sum([np.pad(s.position_hits, (0, 16))[:16] for s in stats_all], 0)
        per_pos = [round(float(h / t), 3) for h, t in zip(hits, tries) if t > 0]
        alpha = float(hits.sum() / max(1, tries.sum()))
        row.update({"accepted_per_round": float(np.mean(acc)),
                    "tokens_per_target_forward": n_total / max(1, sum(s.target_calls for s in stats_all)),
                    "per_position_acceptance": per_pos, "alpha": alpha})
    if method == "mirror":
        hits_b = sum(s.branch_hits for s in stats_all)
        miss_b = sum(s.branch_misses for s in stats_all)
        row["branch_reuse_rate"] = hits_b / max(1, hits_b + miss_b)
        # what ran (sampling and kappa >= 1 run fixed windows whatever was asked); ahead: the windows' mean length
        row["windows"] = "ahead" if all(s.drafted_ahead for s in stats_all) else "fixed"
        row["mean_window"] = float(np.mean([w for s in stats_all for w in s.windows] or [0]))
    fb = [s.fallback for s in stats_all if s.fallback]
    if fb:
        row["fallbacks"] = fb
    return row, outs


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens a round of gamma draft tokens yields at a per-position acceptance alpha (the bonus/correction counted)."""
    return (1 - alpha ** (gamma + 1)) / (1 - alpha) if alpha < 1 else gamma + 1


def predicted_serial(alpha: float, gamma: int, costs: dict) -> float:
    """Draft SD's speed-up over plain decoding on the same threads: E tokens per gamma draft steps and one verify."""
    return expected_tokens(alpha, gamma) * costs["target_step_s"] / (gamma * costs["draft_step_s"] + costs["verify_s"])


def predicted_overlapped(alpha: float, gamma: int, costs: dict, beside: dict, reuse: float) -> float:
    """Mirror-SD's (kappa 0) speed-up over plain decoding at the whole budget (costs: timed alone, the target on every
    thread; beside: timed beside each other, the target one thread short). A round: the target verifies while the
    draft builds the next window's branch (its last word and gamma more), so it lasts the longer of the two; a round
    whose branch is not reused (1 - reuse of them) then waits for gamma draft steps computed alone."""
    g = gamma
    round_s = max(beside["verify_s"], (g + 1) * beside["draft_step_s"]) + (1 - reuse) * g * costs["draft_step_s"]
    return expected_tokens(alpha, g) * costs["target_step_s"] / round_s


def predicted_ahead(alpha: float, gamma: int, costs: dict, beside: dict, rounds: int = 4000) -> float:
    """Mirror-SD's speed-up over plain decoding at the whole budget with windows as the draft writes them
    (heron.runtime.mirror._mirror_ahead), simulated over `rounds` rounds (seeded: the same figure every time): each
    draft word accepted with probability alpha, the draft writing a word every beside["draft_step_s"] up to
    AHEAD_SPAN * gamma + 1 words past the verified sequence, a verify of k words lasting beside["target_step_s"] *
    (1 + (beta - 1) k / gamma) (from one step to the timed verify of gamma + 1 tokens), the target waiting for
    ceil(gamma / AHEAD_LEAST) words before each verify, a round that accepts k words reusing the draft's continuation
    when its next word holds too (alpha again), a miss restarting the draft half a draft step later (the join)."""
    rng = np.random.default_rng(0)
    d, step, beta = beside["draft_step_s"], beside["target_step_s"], beside["beta"]
    least, span = -(-gamma // ms.AHEAD_LEAST), ms.AHEAD_SPAN * gamma + 1
    t, tokens, base, written, next_at = 0.0, 0, 0, 0, d  # next_at: when the next word is written (None: paused)

    def draft_until(when: float) -> None:
        nonlocal written, next_at
        while next_at is not None and next_at <= when:
            written += 1
            next_at = next_at + d if written - base < span else None

    def wait_for(n: int) -> float:  # the time at which n words past base are written
        draft_until(t)
        return t if written - base >= n else next_at + (n - (written - base) - 1) * d
    for _ in range(rounds):
        t = wait_for(least)
        draft_until(t)
        k = min(written - base, gamma)
        t += step * (1 + (beta - 1) * k / gamma)
        draft_until(t)
        n = 0
        while n < k and rng.random() < alpha:
            n += 1
        if n == k:
            t = max(t, wait_for(k + 1))
            draft_until(t)
            if rng.random() < alpha:  # the target's next word is the draft's: its continuation goes on
                tokens += k + 1
                base += k + 1
                if next_at is None and written - base < span:
                    next_at = t + d
                continue
        tokens += n + 1
        t += d / 2
        base, written, next_at = 0, 0, t + d
    return tokens / t * costs["target_step_s"]


def decode_speed(preset_name: str, tokens: int = 64, context: int = 32) -> dict:
    """tokens/s of plain KV-cached decoding through the engine, 1 thread, batch 1 (random weights:
    speed does not depend on them)."""
    import torch

    from heron.models.lm.backend import TorchLM
    from heron.models.lm.model import Transformer, preset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = Transformer(preset(preset_name)).eval()
    backend = TorchLM(m)
    opts = sp.GenerationOptions(max_new_tokens=tokens, stop_at_eot=False)
    prompt = list(range(1, context + 1))
    t0 = time.perf_counter()
    n = sum(1 for _ in sp.plain(backend, prompt, opts))
    dt = time.perf_counter() - t0
    tokens = n
    return {"preset": preset_name, "params_m": m.num_params() / 1e6, "active_params_m": m.num_params(active=True) / 1e6,
            "tokens_per_s": tokens / dt, "threads": 1, "batch": 1}


def _is_gguf(target) -> bool:
    """A named model or a .gguf file (what engine="auto" may put on the native decoder)."""
    from heron.paths import NAMED_LMS
    return target is not None and (str(target) in NAMED_LMS or str(target).lower().endswith(".gguf"))


def run(target_dir, o: BenchOptions, draft: str | None = None, mtp: str | None = None, log=print) -> dict:
    import torch

    engine = o.engine
    if engine == "auto" and {"mtp", "mirror"} & set(o.methods):  # they need the torch target: every method gets it
        engine = "torch"
    elif engine == "auto" and "draft" in o.methods and _is_gguf(target_dir):
        engine = "onnx"  # draft SD verifies on the onnxruntime graph; the native decoder runs lookup and head
    # prompt_cache off: every method computes every prompt whole, as timed before the cache (the runs repeat prompts)
    lm = load_lm(target_dir, device=o.target_device, threads=o.threads, compute=o.compute, engine=engine,
                 prompt_cache=False)
    prompts = (chat_prompts(lm, o.prompts) if o.prompt_set == "chat"
               else held_out_prompts(lm.tokenizer, o.prompts, o.prompt_tokens))
    opts = sp.GenerationOptions(max_new_tokens=o.new_tokens, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k,
                                min_p=o.min_p)
    report = {"machine": f"{machine()}, {torch.get_num_threads()} torch threads max",
              "date": time.strftime("%Y-%m-%d"), "target": str(lm.path), "options": o.__dict__, "rows": [],
              "huge_pages_mb": getattr(lm.backend, "huge_pages_bytes", 0) / 2 ** 20}  # heron.runtime.pages
    split = None  # an onnxruntime target's threads are fixed at load: one with a thread left for Mirror-SD's draft
    if lm.model is None and o.threads > 1 and "mirror" in o.methods:
        split = load_lm(target_dir, device=o.target_device, threads=o.threads - 1, compute=o.compute, engine=engine,
                        prompt_cache=False)
    for model in (lm, split) if split is not None else (lm,):
        for _ in model.generate(prompts[0], sp.GenerationOptions(max_new_tokens=4)):  # one-time costs out of timings
            pass
        if {"draft", "mirror"} & set(o.methods):  # the draft too (a GGUF target's is built in memory: seconds)
            model.draft_backend(sp.SpeculativeOptions(draft=draft))
    ref = None
    methods = ("none",) + tuple(m for m in o.methods if m != "none")
    variants = [(m, g, w) for m in methods for g, w in o.variants(m)]
    several = len({(m, g) for m, g, _ in variants}) > len(methods)

    def label(method, g, w):
        return (f"{method} g={g}" if several and method in ("draft", "mirror") else method) + \
            (f" {w}" if w and len(o.mirror_windows) > 1 else "")
    runs: dict[tuple, list[dict]] = {v: [] for v in variants}
    for rep in range(o.repeats):  # interleaved, so that a slow spell of the machine hits every method alike
        for method, g, w in variants:
            threads = method_threads(method, o.threads)
            torch.set_num_threads(threads)
            spec = None if method == "none" else sp.SpeculativeOptions(method=method, gamma=g, **sp.method_options(
                method, kappa=o.kappa, exit_layer=o.exit_layer, draft=draft, mtp=mtp, fixed_windows=w == "fixed"))
            row, outs = run_method(split if threads < o.threads and split is not None else lm, spec, prompts, opts,
                                   method)
            row["target_threads"], row["draft_threads"] = threads, (1 if method in ("draft", "mirror") else 0)
            row["gamma"] = None if spec is None else spec.gamma
            if ref is None:
                ref = outs
            row["lossless"] = outs == ref if opts.temperature == 0 else None  # sampled: a distribution, not draws
            if row["lossless"] is False:
                raise RuntimeError(f"{label(method, g, w)}: output differs from plain decoding (lossless check failed)")
            runs[(method, g, w)].append(row)
            log(f"{label(method, g, w)} (run {rep + 1} of {o.repeats}): {row['tokens_per_s']:.1f} tok/s")
    for v in variants:
        speeds = [r["tokens_per_s"] for r in runs[v]]
        row = runs[v][int(np.argsort(speeds)[len(speeds) // 2])]  # the median run's own statistics
        row.update(tokens_per_s=float(np.median(speeds)), tokens_per_s_min=min(speeds), tokens_per_s_max=max(speeds),
                   repeats=len(speeds))
        report["rows"].append(row)
    # the draft model's step cost, when a method uses it (SmolLM2 has no draft of its vocabulary: lookup only), and
    # the target's at the threads and window each draft method ran with: report["costs"] at the whole budget (draft
    # SD), report["costs_beside"] at Mirror-SD's (one thread less) where that differs, both at the first window
    context = round(float(np.mean([len(p) for p in prompts]))) + o.new_tokens // 2
    d = lm.draft_backend(sp.SpeculativeOptions(draft=draft)) if {"draft", "mirror"} & set(methods) else None
    memo = {}

    def costs_at(threads: int, gamma: int) -> dict:
        if (threads, gamma) not in memo:
            verifier = split if threads < o.threads and split is not None else lm  # the target as the method ran it
            memo[threads, gamma] = dict(step_costs(verifier, d, gamma, context, threads, beside=threads < o.threads),
                                        gamma=gamma, threads=threads)
        return memo[threads, gamma]
    first = o.windows("draft")[0] or sp.SpeculativeOptions().gamma  # beta and c: the draft methods' window
    report["costs"] = costs_at(o.threads, first)
    if "mirror" in methods and method_threads("mirror", o.threads) != o.threads:
        report["costs_beside"] = costs_at(method_threads("mirror", o.threads), first)
    base = report["rows"][0]["tokens_per_s"]
    vanilla = max((r["tokens_per_s"] for r in report["rows"] if r["method"] == "draft"), default=None)  # its best
    for r in report["rows"]:
        r["speedup_vs_plain"] = r["tokens_per_s"] / base
        if vanilla:
            r["speedup_vs_draft_sd"] = r["tokens_per_s"] / vanilla
        if "alpha" in r and r["method"] in ("draft", "mirror"):
            alone = costs_at(o.threads, r["gamma"])
            r["E"] = expected_tokens(r["alpha"], r["gamma"])
            if r["method"] == "draft":
                r["predicted_speedup"] = predicted_serial(r["alpha"], r["gamma"], alone)
            elif r["windows"] == "ahead":
                r["predicted_speedup"] = predicted_ahead(r["alpha"], r["gamma"], alone,
                                                         costs_at(method_threads("mirror", o.threads), r["gamma"]))
            else:  # Mirror-SD with the reuse it measured, and its ceiling: every prepared branch reused
                near = costs_at(method_threads("mirror", o.threads), r["gamma"])
                r["predicted_speedup"] = predicted_overlapped(r["alpha"], r["gamma"], alone, near,
                                                              r["branch_reuse_rate"])
                r["predicted_all_reused"] = predicted_overlapped(r["alpha"], r["gamma"], alone, near, 1.0)
    report["decode_speed"] = decode_speed(o.decode_preset)
    return report


def markdown(report: dict) -> str:
    cols = ["method", "gamma", "windows", "mean_window", "target_threads", "draft_threads", "tokens_per_s", "tokens_per_s_min",
            "tokens_per_s_max", "speedup_vs_plain", "speedup_vs_draft_sd",
            "predicted_speedup", "predicted_all_reused", "accepted_per_round", "tokens_per_target_forward", "alpha",
            "per_position_acceptance", "branch_reuse_rate", "p50_token_ms", "p95_token_ms", "lossless"]

    def f(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.1f}"
        if isinstance(v, list):
            return " ".join(f"{x:.2f}" for x in v)
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r.get(c)) for c in cols) + " |" for r in report["rows"]]
    lines.append("")
    for key in ("costs", "costs_beside"):
        if key in report:
            c = report[key]
            lines.append(f"target on {c['threads']} thread(s){' beside the draft' if c.get('beside') else ''}: beta "
                         f"(verify {c['gamma'] + 1} tokens / 1 step) = {c['beta']:.2f}; c (draft step / target step) = "
                         f"{c.get('c', float('nan')):.3f}; target step {1e3 * c['target_step_s']:.2f} ms")
    o = report.get("options", {})
    if o.get("temperature"):
        cuts = "".join(f", {name} {o[key]}" for key, name in (("top_k", "top-k"), ("min_p", "min-p")) if o.get(key))
        lines.append(f"sampled at temperature {o['temperature']}, top-p {o.get('top_p', 1.0)}{cuts}, each prompt from "
                     "the seed of its index: lossless in distribution, so no row's tokens are compared with plain "
                     "decoding's")
    ds = report["decode_speed"]
    lines.append(f"decode-speed baseline: preset {ds['preset']} ({ds['params_m']:.1f} M params, "
                 f"{ds['active_params_m']:.1f} M active), 1 thread, batch 1: {ds['tokens_per_s']:.1f} tokens/s")
    return "\n".join(lines)
