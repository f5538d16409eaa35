"""heron's one decoding engine, over LM backends (heron.runtime.lm): plain autoregressive decoding,
classic draft-model speculative decoding, prompt lookup and the windows' prices, and the rounds, caches
and sampler that Mirror speculative decoding (heron.runtime.mirror: draft and target in parallel on
different devices) runs on, all lossless. numpy only; the backends do the compute. The engine knows
nothing about text: token ids in, `Token`s out (a detokenizer callback fills their text).

Options are two frozen dataclasses that check themselves before any work: `GenerationOptions` (what to
generate) and `SpeculativeOptions` (how to speculate). The one sampler is `probs` + `draw`.

Acceptance (Leviathan et al. / Chen et al.), at each draft position i with target p_i and draft q_i:
  accept draft token d with probability min(1, p_i(d) / q_i(d));
  on the first rejection, emit a token from norm(max(p_i - q_i, 0)) and end the round;
  if every draft token is accepted, emit a bonus token from p_gamma.
Greedy decoding is the special case of one-hot p and q, so greedy output equals plain decoding.

Every backend keeps a cache that is a prefix of the sequence plus, possibly, rejected tokens; `_sync`
trims those and feeds what it is missing, so the strategies never track cache offsets by hand.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Collection, Iterable, Iterator, Protocol, Sequence

import numpy as np

from heron.runtime.lm import Token


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate (every decoding method takes the same options)."""

    max_new_tokens: int = 64        # stop after this many new tokens (or earlier: end of text, full context)
    temperature: float = 0.0        # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0              # nucleus sampling: keep the smallest set of tokens holding this much mass
    top_k: int = 0                  # keep only the k likeliest tokens (0: all); top-p then holds their mass
    min_p: float = 0.0              # keep only tokens at least this fraction as likely as the likeliest (0: all)
    seed: int | None = None         # sampling seed: the same seed and method give the same output (greedy: every method)
    stop_at_eot: bool = True        # stop after any of the model's end-of-turn tokens (LanguageModel.end_ids)

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t == 0 or 0.01 <= t <= 100):
            raise ValueError(f"temperature must be 0 (greedy) or a number in [0.01, 100], got {t!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not math.isfinite(self.top_p) \
                or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: every token), got {self.top_k!r}")
        m = self.min_p
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 <= m < 1:
            raise ValueError(f"min_p must be in [0, 1), got {m!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")

    @property
    def sampling(self) -> tuple[float, float, int, float]:
        """(temperature, top_p, top_k, min_p): probs()'s arguments after the logits."""
        return self.temperature, self.top_p, self.top_k, self.min_p


# Mirror-SD's early-exit candidates per position where the target has an exit head trained for the exit layer
# (without one, a low layer guesses SmolLM2's next word 3-16% of the time: the draft's own continuation alone
# decoded SmolLM2 at 37.5 tokens/s, with two exit candidates 28.4; BENCHMARKS.md "Mirror-SD on SmolLM2")
DEFAULT_KAPPA = 2
METHODS = ("none", "draft", "mtp", "mirror", "lookup", "head")  # none: plain decoding (as the CLI's --speculative none)
# draft tokens per round where the caller does not say: the head's rounds start with prompt lookup, whose windows
# copy long runs of the context (code edits), and its own windows are cut by best_window to the 1-3 words that pay;
# 8 against 4: 2.49x against 2.26x tokens per plain step on the code edit, the summary 1% lower, chat level
# (scripts/replay_speculation.py; measured 2.40x against 2.09x on decoding: BENCHMARKS.md)
# Mirror-SD 12: on SmolLM2 (the fp32 target, its int8 graph drafting beside it, Z) windows of 12 decoded 1.28-1.39x
# faster than 4 on the held-out docs, fixed or as the draft writes them (those never exceed the cap), and each kind's
# best window on the docs and the chat questions was 12-20 (BENCHMARKS.md "Mirror-SD with windows as the draft writes
# them"); on the toy lm-nano, whose draft is accepted 64% of the time, 4 stays faster (Mirror-SD is slower than its
# plain decoding there either way)
DEFAULT_GAMMA = {"head": 8, "mirror": 12}
# the options only some methods read (field -> those methods): any other method given a value other than the
# field's default is refused rather than silently ignored (a --draft-head without --speculative head, say)
METHOD_OPTIONS = {"kappa": ("mirror",), "exit_layer": ("mirror",), "exit_head": ("mirror",), "mtp": ("mtp",),
                  "head": ("head",), "head_lookup": ("head",), "adaptive": ("lookup", "head"),
                  "fixed_windows": ("mirror",),
                  "draft": ("draft", "mirror"), "draft_device": ("draft", "mirror"),
                  "draft_threads": ("draft", "mirror"), "draft_timeout_s": ("draft", "mirror")}


@dataclass(frozen=True)
class SpeculativeOptions:
    """How to speculate; every method is lossless (the output is the target's own)."""

    method: str = "draft"           # draft: a small draft model; mtp: gated-LoRA multi-token heads; mirror: Mirror-SD;
                                    # lookup: prompt lookup (the tokens that followed the context's last n-gram before)
                                    # head: a draft head on the target's own hidden state (heron.runtime.draft_head)
    gamma: int | None = None        # draft tokens per round, at most (None: the method's DEFAULT_GAMMA)
    kappa: int | None = None        # Mirror-SD: early-exit candidates per window position (0: none, only the
                                    # draft's own continuation is built beside the target: no early exit needed;
                                    # None: DEFAULT_KAPPA with an exit head trained for exit_layer, else 0)
    exit_layer: int = 2             # Mirror-SD: the target layer whose early exit feeds the draft
    draft: str | None = None        # ONNX draft bundle folder (None: a GGUF target's own int8 graph, else lm-draft)
    draft_device: str = "cpu"       # onnxruntime provider for the draft: cpu, coreml, qnn, cuda, ... or a full name
    draft_threads: int = 1          # onnxruntime threads of the draft
    draft_timeout_s: float = 5.0    # a draft call slower than this counts as stalled: the target goes on alone
    mtp: str | None = None          # MTP adapter folder (None: the model's own `mtp/`)
    exit_head: str | None = None    # Mirror-SD: folder of a trained early-exit head (None: the model's own, if any)
    head: str | None = None         # head: a draft-head bundle (scripts/train_draft_head.py)
    head_lookup: bool = True        # head: prompt lookup's window first where the context repeats itself
    adaptive: bool = True           # lookup and head: cut each window to the length that pays for its verification
                                    # (best_window; up to gamma), or to none; False: always up to gamma tokens
    fixed_windows: bool = False     # Mirror-SD: windows of gamma draft tokens, the next one built beside the target's
                                    # verify; False (greedy, kappa 0): the draft keeps drafting while the target
                                    # verifies and each window is what it has drafted by then
                                    # (mirror._mirror_ahead; sampling and kappa >= 1 always run fixed windows)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "none" and self.gamma is not None:
            raise ValueError(f"gamma applies to a speculative method; the method is 'none', got gamma={self.gamma!r}")
        if self.gamma is None:
            object.__setattr__(self, "gamma", DEFAULT_GAMMA.get(self.method, 4))
        for name in ("gamma", "draft_threads"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.kappa is not None and (not _is_int(self.kappa) or self.kappa < 0):
            raise ValueError(f"kappa must be an integer >= 0 (0: no early-exit candidates), got {self.kappa!r}")
        if not _is_int(self.exit_layer) or self.exit_layer < 1:
            raise ValueError(f"exit_layer must be an integer >= 1, got {self.exit_layer!r}")
        for name in ("adaptive", "head_lookup", "fixed_windows"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.draft_timeout_s, (int, float)) or not math.isfinite(self.draft_timeout_s) \
                or self.draft_timeout_s <= 0:
            raise ValueError(f"draft_timeout_s must be a positive number of seconds, got {self.draft_timeout_s!r}")
        defaults = {f.name: f.default for f in fields(self)}
        for name, methods in METHOD_OPTIONS.items():
            if self.method not in methods and getattr(self, name) != defaults[name]:
                raise ValueError(f"{name} applies to method {' or '.join(map(repr, methods))} only; the method is "
                                 f"{self.method!r}")


def method_options(method: str, **options) -> dict:
    """The options that `method` reads, out of SpeculativeOptions fields given for several methods at once (a
    benchmark running each method with the same flags)."""
    return {k: v for k, v in options.items() if method in METHOD_OPTIONS.get(k, (method,))}


@dataclass
class DecodeStats:
    method: str = "plain"
    target_calls: int = 0
    draft_calls: int = 0
    rounds: int = 0
    accepted: list[int] = field(default_factory=list)      # draft tokens accepted per round
    windows: list[int] = field(default_factory=list)       # draft tokens verified per round (the window length)
    position_tries: list[int] = field(default_factory=list)  # per draft position: times it was verified
    position_hits: list[int] = field(default_factory=list)   # ... and accepted
    target_time_s: float = 0.0
    draft_time_s: float = 0.0
    branch_hits: int = 0
    branch_misses: int = 0
    branches_built: int = 0
    drafted_ahead: bool = False    # Mirror-SD ran windows as the draft wrote them (mirror._mirror_ahead), not fixed ones
    fallback: str | None = None    # why decoding continued on the target alone
    token_times: list[float] = field(default_factory=list)   # wall time at which each token was emitted
    generated: int = 0
    prompt_cached: int = 0         # the prompt's leading tokens the prompt cache held (not computed again)

    def record_position(self, i: int, accepted: bool) -> None:
        while len(self.position_tries) <= i:
            self.position_tries.append(0)
            self.position_hits.append(0)
        self.position_tries[i] += 1
        self.position_hits[i] += int(accepted)

    @property
    def tokens_per_target_call(self) -> float:
        return self.generated / max(1, self.target_calls)

    @property
    def mean_accepted(self) -> float:
        """Mean accepted draft tokens per round (the bonus/correction token not counted)."""
        return float(np.mean(self.accepted)) if self.accepted else 0.0

    @property
    def reuse_rate(self) -> float:
        n = self.branch_hits + self.branch_misses
        return self.branch_hits / n if n else 0.0


# ------------------------------------------------------------------------------------------------
# distributions


SAMPLER = "auto"  # "auto": the native library's sampler where it is built (heron.runtime.native.Sampler); "numpy"


def _native_sampler():
    if SAMPLER == "numpy":
        return None
    from heron.runtime import native
    return native.sampler()


def probs(logits: np.ndarray, temperature: float, top_p: float = 1.0, top_k: int = 0,
          min_p: float = 0.0) -> np.ndarray:
    """Next-token distribution(s) the sampler draws from; one-hot at temperature 0 (greedy). At a temperature:
    softmax(logits / temperature), then only the words top-k, top-p and min-p all keep (nucleus()), renormalized.
    float32 logits go to the native library's sampler where it is built (the same words kept, a likely word's
    probability within ~1e-6 of numpy's, a fraction of numpy's work: scripts/bench_sampling.py --sampler-only);
    numpy_probs otherwise."""
    if temperature == 0:  # float32 holds a one-hot exactly, and the logits need no float64 copy (a verify block's
        logits = np.asarray(logits)  # (T, V) in float64 cost a SmolLM2 round ~1 ms, several % of it)
        out = np.zeros(logits.shape, np.float32)
        np.put_along_axis(out, logits.argmax(-1)[..., None], 1.0, axis=-1)
        return out
    fast = _native_sampler()
    if fast is not None and getattr(logits, "dtype", None) == np.float32:
        return fast.probs(logits, temperature, top_p, top_k, min_p)
    return numpy_probs(logits, temperature, top_p, top_k, min_p)


def numpy_probs(logits: np.ndarray, temperature: float, top_p: float = 1.0, top_k: int = 0,
                min_p: float = 0.0) -> np.ndarray:
    """probs() in numpy (float64) at a temperature > 0: where the native library is not built, and its reference."""
    p = np.divide(logits, temperature, dtype=np.float64)  # in place from here: the bits of the expression
    p -= p.max(-1, keepdims=True)  # exp(z - z.max()) with z = float64(logits) / temperature, without its temporaries
    np.exp(p, out=p)
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0 or 0 < top_k < p.shape[-1] or min_p > 0:
        rows = p.reshape(-1, p.shape[-1])
        out = np.zeros_like(rows)
        for row, o in zip(rows, out):
            keep = nucleus(row, top_p, top_k, min_p)
            o[keep] = row[keep] / row[keep].sum()
        p = out.reshape(p.shape)
    return p


NUCLEUS_STEP = 64.0  # nucleus(): candidates are the tokens within this factor of the likeliest, then 64x further


def nucleus(p: np.ndarray, top_p: float, top_k: int = 0, min_p: float = 0.0) -> np.ndarray:
    """The ids one distribution p (V,) keeps, in order of falling probability (ties: the lower id first): a prefix of
    that order, the shortest of three: top-k's k words (0: all); top-p's, each token whose predecessors hold less than
    top_p of the mass (of top-k's words' mass where top_k is set, as transformers' top-p after top-k); min-p's, each
    token at least min_p times as likely as the likeliest. Sorts only the candidates at least 1/NUCLEUS_STEP as
    likely as the likeliest (or 1/64 of that, ...) until the prefix ends inside them: every token left out is less
    likely than every candidate, so the ids are those a full stable sort gives, without sorting SmolLM2's 49,152 words
    per token (2.8 -> 0.17 ms a row; a chat answer's nucleus at top-p 0.9 holds a few words:
    scripts/bench_sampling.py --sampler-only)."""
    V, top = p.shape[-1], float(p.max())
    k = top_k if 0 < top_k < V else V
    thr = top
    while True:
        thr /= NUCLEUS_STEP
        every = not thr > top * 1e-12
        cand = np.arange(V) if every else np.flatnonzero(p >= thr)  # at last every token
        if len(cand) < k < V and not every:
            continue  # top-k's words first: top-p reads their mass
        cand = cand[np.argsort(-p[cand], kind="stable")]  # falling probability, ties by id
        sp = p[cand]
        limit = top_p if k == V else top_p * float(sp[:k].sum())
        n = int(np.count_nonzero(np.cumsum(sp) - sp < limit))  # the prefix kept (the sums rise: a prefix)
        n = min(n, k)
        if min_p > 0:
            n = min(n, int(np.count_nonzero(sp >= min_p * top)))
        if n < len(cand) or n == k or len(cand) == V:
            return cand[:n]


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One id drawn from p (V,): the id rng.choice(len(p), p=p) draws, from the same uniform (its inverse CDF),
    without choice()'s checks of p; no uniform where a word is certain (p exactly 1). In the native library where it
    is built (numpy's arithmetic, the same ids), numpy_draw otherwise."""
    fast = _native_sampler()
    if fast is not None:
        return fast.draw(p, rng)
    return numpy_draw(p, rng)


def numpy_draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """draw() in numpy (SmolLM2: 0.39 -> 0.23 ms a row against choice(), scripts/bench_sampling.py --sampler-only)."""
    if p.max() == 1.0:
        return int(p.argmax())
    if _mostly_zeros(p):  # a nucleus: the sums over its words alone are the same numbers (adding 0 is exact)
        ids = np.flatnonzero(p)
        cdf = np.cumsum(p[ids], dtype=np.float64)
        cdf /= cdf[-1]
        return int(ids[cdf.searchsorted(rng.random(), side="right")])
    cdf = np.cumsum(p, dtype=np.float64)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def _mostly_zeros(p: np.ndarray) -> bool:
    """Whether most of p's words are 0 (a top-p nucleus, a residual): then draw() sums only the others."""
    return 4 * np.count_nonzero(p) < p.shape[-1]


def verify_greedy(logits: np.ndarray, draft: Sequence[int], stats: DecodeStats | None = None) -> tuple[int, int]:
    """verify() at temperature 0 from the target's logits (len(draft) + 1, V) alone: a draft word is kept where it
    is the target's argmax, the first that is not is replaced by it. The same outcome as probs() + verify() (one-hot
    p; any q), without building a one-hot row per position (about 0.9 ms of a 9-row SmolLM2 round)."""
    best = np.asarray(logits).argmax(-1)
    for i, d in enumerate(draft):
        ok = int(best[i]) == d
        if stats is not None:
            stats.record_position(i, ok)
        if not ok:
            return i, int(best[i])
    return len(draft), int(best[len(draft)])


def one_hot(window: Sequence[int], vocab_size: int) -> np.ndarray:
    """The distributions of a deterministic draft (a Drafter's qs = None): one-hot at each of its words."""
    qs = np.zeros((len(window), vocab_size))
    qs[np.arange(len(window)), list(window)] = 1.0
    return qs


def verify(p, q: np.ndarray, draft: Sequence[int], rng: np.random.Generator,
           stats: DecodeStats | None = None) -> tuple[int, int]:
    """Rejection sampling of `draft` (gamma tokens) against target p (gamma+1, V) and draft q (gamma, V).
    -> (number accepted, the correction or bonus token). p: an array, or TargetRows (each row computed when read)."""
    for i, d in enumerate(draft):
        pi, qi = p[i], q[i]
        ok = rng.random() < min(1.0, pi[d] / max(qi[d], 1e-30)) if qi[d] > 0 else False
        if qi.max() == 1.0 and pi.max() == 1.0:  # greedy: exact comparison, no randomness
            ok = pi[d] == 1.0
        if stats is not None:
            stats.record_position(i, ok)
        if not ok:
            residual = np.maximum(pi - qi, 0.0)
            total = residual.sum()
            return i, draw(residual / total if total > 0 else pi, rng)
    return len(draft), draw(p[len(draft)], rng)


class TargetRows:
    """The target's distributions (probs) at a verify call's positions, each row computed when verify() first reads
    it: a round whose first draft word is rejected needs one row of SmolLM2's 49,152 words, not gamma + 1."""

    def __init__(self, logits: np.ndarray, sampling: tuple):
        self.logits, self.sampling, self._rows = logits, tuple(sampling), {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self._rows:
            self._rows[i] = probs(self.logits[i], *self.sampling)
        return self._rows[i]


# ------------------------------------------------------------------------------------------------
# helpers


class CachedBackend:
    """What a backend's cache holds (token ids), so it can be synced to the sequence."""

    def __init__(self, backend):
        self.b, self.ids = backend, []
        self.last_fed = 0  # tokens the last forward computed

    def sync(self, seq: list[int], upto: int) -> list[int]:
        """Trim tokens that disagree with seq[:upto]; -> the tokens of seq[:upto] still to feed."""
        n = 0
        for a, b in zip(self.ids, seq[:upto]):
            if a != b:
                break
            n += 1
        if len(self.ids) > n:
            self.b.trim(len(self.ids) - n)
            del self.ids[n:]
        return seq[n:upto]

    def forward(self, tokens: list[int], last: int | None = None) -> np.ndarray:
        out = self.b.forward(tokens, last=last)
        self.ids.extend(tokens)
        self.last_fed = len(tokens)
        return out


class Emitter:
    """Appends accepted tokens to the sequence and decides when generation is done."""

    def __init__(self, seq, opts: GenerationOptions, stats: DecodeStats, detok: Callable | None,
                 end_ids: Collection[int] = ()):
        self.seq, self.opts, self.stats, self.detok = seq, opts, stats, detok
        self.end_ids = frozenset(end_ids) if opts.stop_at_eot else frozenset()
        self.start_len, self.done = len(seq), False

    def emit(self, tok: int, from_draft: bool) -> Token:
        self.seq.append(tok)
        self.stats.generated += 1
        self.stats.token_times.append(time.perf_counter())
        n_new = len(self.seq) - self.start_len
        if n_new >= self.opts.max_new_tokens or tok in self.end_ids:
            self.done = True
        return Token(tok, self.detok(tok) if self.detok else "", len(self.seq) - 1, from_draft)


def check_prompt(prompt: Sequence[int], max_len: int) -> None:
    if not prompt:
        raise ValueError("empty prompt: give at least one token")
    if len(prompt) >= max_len:
        raise ValueError(f"the prompt is {len(prompt)} tokens; the context is {max_len}")


def room(seq, max_len, gamma) -> int:
    """How many draft tokens still fit: the round may emit gamma + 1 tokens and the sequence must stay
    within the context (the same end as plain decoding)."""
    return max(0, min(gamma, max_len - len(seq) - 1))


# ------------------------------------------------------------------------------------------------
# plain decoding


def fresh(backend, positions: int) -> None:
    """An empty cache sized for `positions` (prompt, new tokens and a draft window) where the backend
    can reserve room up front (onnxruntime's shared buffers), so decoding never regrows it."""
    backend.reset()
    reserve = getattr(backend, "reserve", None)
    if reserve is not None:
        reserve(positions)


def start_cache(target, prompt: Sequence[int], positions: int, stats: DecodeStats | None = None) -> CachedBackend:
    """The target's cache at the start of a generation continuing `prompt`, with room for `positions`. Where the
    backend keeps its cache between generations (`reuse_prefix`, the prompt cache, on a backend that `keeps_prefix`:
    the native decoder, onnxruntime graphs with shared buffers and exact steps) the positions the prompt shares with
    what it holds (`cached_tokens()`) stay and only the rest of the prompt is computed: the next turn of a
    conversation computes its new message, not the whole conversation again. The last prompt token is always fed
    again (its logits choose the first word). A kept position holds what computing it afresh gives (those backends'
    steps compute what their blocks compute), so the words are an empty cache's. Elsewhere: an empty cache (fresh).
    stats.prompt_cached: how many prompt tokens were kept."""
    tc = CachedBackend(target)
    held = target.cached_tokens() if getattr(target, "reuse_prefix", False) and getattr(target, "keeps_prefix", False) \
        else []
    n = 0
    for a, b in zip(held, prompt[:len(prompt) - 1]):
        if a != b:
            break
        n += 1
    if n == 0:
        fresh(target, positions)
        return tc
    target.trim(len(held) - n)
    tc.ids = list(prompt[:n])
    reserve = getattr(target, "reserve", None)
    if reserve is not None:
        reserve(positions)
    if stats is not None:
        stats.prompt_cached = n
    return tc


def plain(target, prompt: Sequence[int], opts: GenerationOptions = GenerationOptions(),
          stats: DecodeStats | None = None, detok: Callable | None = None) -> Iterator[Token]:
    """The one plain decoding loop: one target forward per token."""
    check_prompt(prompt, target.max_len)
    stats = stats if stats is not None else DecodeStats()
    stats.method = stats.method or "plain"
    rng = np.random.default_rng(opts.seed)
    tc = start_cache(target, prompt, len(prompt) + opts.max_new_tokens, stats)
    em = Emitter(list(prompt), opts, stats, detok, getattr(target, "end_ids", ()))
    yield from plain_loop(tc, list(prompt), opts, stats, rng, em)


def _plain_step(tc: CachedBackend, seq, opts, stats, rng, em: Emitter) -> Token:
    """One target forward, one token."""
    return em.emit(_plain_token(tc, seq, opts, stats, rng), False)


def _plain_token(tc: CachedBackend, seq, opts, stats, rng) -> int:
    """The next token from one target forward (not yet emitted)."""
    feed = tc.sync(seq, len(seq))
    t0 = time.perf_counter()
    logits = tc.forward(feed, last=1)[-1]
    stats.target_time_s += time.perf_counter() - t0
    stats.target_calls += 1
    if opts.temperature == 0:  # greedy: the argmax, as draw(probs(...)) would give it, without the one-hot row
        return int(np.asarray(logits).argmax())
    return draw(probs(logits, *opts.sampling), rng)


def plain_loop(tc: CachedBackend, seq, opts, stats, rng, em: Emitter) -> Iterator[Token]:
    em.seq = seq
    while not em.done and len(seq) < tc.b.max_len:
        yield _plain_step(tc, seq, opts, stats, rng, em)


# ------------------------------------------------------------------------------------------------
# the one verify loop: every draft source proposes, the target verifies


class Drafter(Protocol):
    """A draft source: up to g tokens continuing `seq` and the distributions they were drawn from
    (g, V), or None for a deterministic draft (one-hot at its tokens: prompt lookup, a greedy head); ([], None)
    when it has nothing to propose this round (a plain step follows); None when it failed (stats.fallback says
    why; decoding goes on with the target alone)."""

    def propose(self, seq: list[int], g: int) -> tuple[list[int], np.ndarray | None] | None: ...


def _draft_and_verify(tc: CachedBackend, drafter: Drafter, seq, max_len: int, gamma: int, opts, stats, rng,
                      em: Emitter) -> Iterator[Token]:
    """Propose, verify in one target forward, emit the accepted tokens and the correction; until done."""
    observe = getattr(drafter, "observe", None)  # a drafter that sizes its windows by how often they are accepted
    prices = getattr(drafter, "prices", None)  # a drafter whose windows are priced by timing them (RoundPrices)
    clock = prices.clock if prices is not None else None
    while not em.done:
        g = room(seq, max_len, gamma)
        t0 = clock() if clock else 0.0
        res = drafter.propose(seq, g) if g else None
        if res is None:
            break
        window, qs = res
        if not window:
            tok = _plain_token(tc, seq, opts, stats, rng)
            # the round's proposal, call and choice (not the caller's time with the token), where its call computed
            # one token (not the prompt: the first round's call computes it too)
            if clock and tc.last_fed == 1:
                drafter.timed(0, clock() - t0)
            yield em.emit(tok, False)
            continue
        n_acc, extra = _check_round(tc, seq, window, qs, opts, stats, rng)
        if clock and tc.last_fed == len(window) + 1:
            drafter.timed(len(window), clock() - t0)
        yield from emit_round(em, window, n_acc, extra)
        if observe is not None:
            observe(len(window), n_acc)
    if not em.done:
        yield from plain_loop(tc, seq, opts, stats, rng, em)


# ------------------------------------------------------------------------------------------------
# draft-model speculative decoding


class DraftRunner:
    """Runs draft calls on a worker thread with a timeout; after a failure or a stall the draft is
    abandoned for the rest of the generation and decoding continues on the target alone."""

    def __init__(self, timeout_s: float):
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="heron-draft")
        self.timeout_s = timeout_s
        self.failed: str | None = None

    def submit(self, fn, *args) -> cf.Future:
        return self.pool.submit(fn, *args)

    def result(self, fut: cf.Future, timeout: float | None = None):
        try:
            return fut.result(timeout=self.timeout_s if timeout is None else timeout)
        except cf.TimeoutError:
            self.failed = f"draft stalled (no answer in {self.timeout_s:.1f} s)"
        except Exception as e:  # any backend error: the target alone finishes the job
            self.failed = f"draft failed: {type(e).__name__}: {e}"
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def start_draft(target, draft, prompt, opts: GenerationOptions, spec: SpeculativeOptions, stats, detok, method: str,
                draft_ahead: int | None = None):
    """Common start of the draft-based methods: checks, RNGs (the draft samples from its own stream),
    fresh caches (the draft's with room for draft_ahead tokens past the end, spec.gamma where None), the sequence
    and its emitter, the draft runner."""
    check_prompt(prompt, target.max_len)
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.vocab_size}) differs from the target's ({target.vocab_size})")
    stats = stats if stats is not None else DecodeStats(method=method)
    rng = np.random.default_rng(opts.seed)
    draft_rng = DraftSeeds(opts.seed)
    fresh(target, len(prompt) + opts.max_new_tokens + spec.gamma)
    fresh(draft, len(prompt) + opts.max_new_tokens + (spec.gamma if draft_ahead is None else draft_ahead))
    seq = list(prompt)
    em = Emitter(seq, opts, stats, detok, getattr(target, "end_ids", ()))
    return (stats, rng, draft_rng, CachedBackend(target), CachedBackend(draft), seq, em,
            DraftRunner(spec.draft_timeout_s))


class DraftSeeds:
    """The draft's random draws, keyed by the sequence position its window starts at.

    A window continuing a sequence of length n always draws from the generator (seed, n), whether a
    Mirror-SD branch built it on the draft thread or the draft computed it serially after a miss: so
    the output for a seed does not depend on how many branches the thread finished in time.
    """

    def __init__(self, seed: int | None):
        self.base = int(np.random.SeedSequence().entropy) if seed is None else seed + 1

    def at(self, position: int) -> np.random.Generator:
        return np.random.default_rng([self.base, position])


def _draft_window(dc: CachedBackend, seq: list[int], gamma: int, opts: GenerationOptions,
                  seeds: DraftSeeds) -> tuple[list[int], np.ndarray]:
    """gamma draft tokens continuing seq, and the draft distributions they were drawn from."""
    rng = seeds.at(len(seq))
    feed = dc.sync(seq, len(seq))
    toks, qs = [], []
    for _ in range(gamma):
        q = probs(dc.forward(feed, last=1)[-1], *opts.sampling)
        t = draw(q, rng)
        toks.append(t)
        qs.append(q)
        feed = [t]
    return toks, np.stack(qs)


def serial_window(runner: DraftRunner, dc: CachedBackend, seq, g: int, opts, draft_rng, stats: DecodeStats):
    """The draft's next g tokens computed while the target waits; None (and stats.fallback set) when the
    draft failed or stalled."""
    t0 = time.perf_counter()
    res = runner.result(runner.submit(_draft_window, dc, seq, g, opts, draft_rng))
    stats.draft_time_s += time.perf_counter() - t0
    if res is None:
        stats.fallback = runner.failed
    else:
        stats.draft_calls += g
    return res


def speculative(target, draft, prompt: Sequence[int], opts: GenerationOptions = GenerationOptions(),
                spec: SpeculativeOptions = SpeculativeOptions(), stats: DecodeStats | None = None,
                detok: Callable | None = None) -> Iterator[Token]:
    """Classic draft-model speculative decoding: the draft proposes spec.gamma tokens, the target
    verifies them in one forward pass, rejected tokens are rolled back from both caches."""
    stats, rng, draft_rng, tc, dc, seq, em, runner = start_draft(target, draft, prompt, opts, spec, stats, detok,
                                                                 "draft")

    class ModelDrafter:
        def propose(self, seq, g):
            return serial_window(runner, dc, seq, g, opts, draft_rng, stats)

    try:
        yield from _draft_and_verify(tc, ModelDrafter(), seq, min(target.max_len, draft.max_len), spec.gamma, opts,
                                     stats, rng, em)
    finally:
        runner.close()


def verify_round(tc: CachedBackend, seq, window, qs, opts, stats, rng, em, logits=None) -> Iterator[Token]:
    """Target-verify `window`; emit the accepted tokens and the correction/bonus token."""
    n_acc, extra = _check_round(tc, seq, window, qs, opts, stats, rng, logits)
    yield from emit_round(em, window, n_acc, extra)


def _check_round(tc: CachedBackend, seq, window, qs, opts, stats, rng, logits=None) -> tuple[int, int]:
    """Target-verify `window` (one call, unless its `logits` are given) -> (draft tokens accepted, the
    correction/bonus token); nothing emitted yet."""
    if logits is None:
        feed = tc.sync(seq, len(seq)) + list(window)
        t0 = time.perf_counter()
        logits = tc.forward(feed, last=len(window) + 1)[-(len(window) + 1):]
        stats.target_time_s += time.perf_counter() - t0
        stats.target_calls += 1
    if opts.temperature == 0:  # greedy: the target's argmax decides, whatever the draft's distributions
        n_acc, extra = verify_greedy(logits, window, stats)
    else:
        qs = one_hot(window, logits.shape[-1]) if qs is None else qs
        n_acc, extra = verify(TargetRows(logits, opts.sampling), qs, window, rng, stats)
    stats.rounds += 1
    stats.accepted.append(n_acc)
    stats.windows.append(len(window))
    return n_acc, extra


def emit_round(em: Emitter, window: Sequence[int], n_acc: int, extra: int) -> Iterator[Token]:
    """The accepted draft tokens, then the correction/bonus token (stopping early when generation ends)."""
    for t in window[:n_acc]:
        yield em.emit(t, True)
        if em.done:
            return
    yield em.emit(extra, False)


# ------------------------------------------------------------------------------------------------
# prompt lookup: a training-free draft from the context itself

# the longest, then shorter, suffix n-grams searched for in the context; a single recurring token is too
# weak a hint (on SmolLM2, 1-gram drafts were mostly rejected and made chat slower: BENCHMARKS.md). Six words first:
# a longer match finds the place being copied where three words also occur later by chance (replayed on edits that
# are not the benchmarks', scripts/replay_window_policy.py --sweep ngram: 1.89x -> 1.98x with the draft head, 1.67x ->
# 1.81x lookup alone; five to eight words first within 1% of each other)
LOOKUP_NGRAM = (6, 2)


def lookup_window(seq: Sequence[int], gamma: int, ngram: tuple[int, int] | None = None) -> list[int]:
    """Up to gamma tokens that followed the latest earlier occurrence of the sequence's last n tokens
    (n from ngram[0] down to ngram[1]); [] when no suffix recurs. Code edits, summaries and quoted
    answers repeat their context, and there this draft is often right for free."""
    ngram = LOOKUP_NGRAM if ngram is None else ngram
    arr = np.asarray(seq, dtype=np.int64)
    for n in range(ngram[0], ngram[1] - 1, -1):
        if len(arr) <= n:
            continue
        tail = arr[-n:]
        starts = np.flatnonzero(arr[:len(arr) - n] == tail[0])  # candidates, not counting the suffix itself
        for s in starts[::-1]:  # the latest occurrence first
            if np.array_equal(arr[s:s + n], tail):
                follow = arr[s + n:s + n + gamma]
                if len(follow):
                    return [int(t) for t in follow]
    return []


class LookupIndex:
    """lookup_window over a sequence that only grows (a generation's context), kept as it grows: each n-gram's latest
    start, so a window costs the tokens added since the last one instead of a scan of the whole context. The same
    windows as lookup_window(seq, gamma, ngram); a sequence that is not the one indexed (another list, or a shorter
    one) is indexed again from its start."""

    def __init__(self, ngram: tuple[int, int] | None = None):
        self.ngram = LOOKUP_NGRAM if ngram is None else ngram  # None: the module's, when the index is made
        self._seq: list | None = None
        self._len = 0
        self._latest: dict[int, dict[tuple, int]] = {}
        self._upto: dict[int, int] = {}

    def window(self, seq: list[int], gamma: int) -> list[int]:
        L = len(seq)
        if seq is not self._seq or L < self._len:
            self._seq, self._len = seq, 0
            self._latest = {n: {} for n in range(self.ngram[1], self.ngram[0] + 1)}
            self._upto = {n: 0 for n in self._latest}
        self._len = L
        for n in range(self.ngram[0], self.ngram[1] - 1, -1):
            if L <= n:
                continue
            latest, end = self._latest[n], L - n  # starts before the suffix's own
            for s in range(self._upto[n], end):
                latest[tuple(seq[s:s + n])] = s
            self._upto[n] = end
            s = latest.get(tuple(seq[end:]))
            if s is not None:
                return [int(t) for t in seq[s + n:s + n + gamma]]
        return []


def lookup(target, prompt: Sequence[int], opts: GenerationOptions = GenerationOptions(),
           spec: SpeculativeOptions = SpeculativeOptions(method="lookup"), stats: DecodeStats | None = None,
           detok: Callable | None = None) -> Iterator[Token]:
    """Prompt-lookup speculative decoding: the window is copied from the context (lookup_window) and
    verified by the target in one forward; a deterministic draft (q one-hot), so the usual rejection
    rule keeps the target's distribution. No match: a plain step."""
    stats = stats if stats is not None else DecodeStats(method="lookup")
    drafter = LookupDrafter(target.vocab_size, stats, spec.adaptive, verify_cost(target), free_draft_tokens(target),
                            verify_costs(target), round_prices(target, opts))
    yield from drafted(target, drafter, prompt, opts, spec.gamma, stats, detok)


def drafted(target, drafter: Drafter, prompt: Sequence[int], opts: GenerationOptions, gamma: int,
            stats: DecodeStats, detok: Callable | None = None) -> Iterator[Token]:
    """Generation by any draft source that needs no draft model of its own (prompt lookup; MTP, whose
    drafts come from the target's own forward): the drafter proposes, the target verifies, one loop."""
    check_prompt(prompt, target.max_len)
    rng = np.random.default_rng(opts.seed)
    tc = start_cache(target, prompt, len(prompt) + opts.max_new_tokens + gamma, stats)
    seq = list(prompt)
    em = Emitter(seq, opts, stats, detok, getattr(target, "end_ids", ()))
    yield from _draft_and_verify(tc, drafter, seq, target.max_len, gamma, opts, stats, rng, em)


# Cost-aware lookup windows. Verifying k draft tokens in one call costs 1 + VERIFY_COST * k plain steps
# (SmolLM2's int8x2 graph, machine C, five runs of scripts/bench_smollm2_spec.py: 1.1-2.0 / 1.4-2.6 / 2.2-3.6 for
# T = 2 / 3 / 5 tokens), and with a per-token acceptance p it yields 1 + p + ... + p^k tokens: the window is cut to the k that
# gives the most tokens per unit of cost, and to 0 (a plain step) when no k beats plain decoding. p is
# counted from the rounds so far (decayed, with a prior), so chat answers with little to copy stop
# paying for rejected windows and code edits keep long ones. The choice depends on acceptances only,
# never on timings: a seeded sampling run draws the same tokens every time.
# A backend that knows its own price says so (`verify_cost`: SmolLM2's int8x2 graph 0.34, int8 0.25 on machine B,
# scripts/probe_smollm2_costs.py); the others get VERIFY_COST. It is a constant of the backend, never a timing.
VERIFY_COST = 0.5
LOOKUP_PRIOR = 0.6     # acceptance assumed before any round, weighted as PRIOR_WEIGHT tries
# ... and for a window's later words: once a window's first word holds, copied text goes on (~0.9 on SmolLM2's code
# edits). With the first word's prior here too, a copy's windows stayed at two words for rounds after a rejection
# (scripts/replay_window_policy.py, on edits and summaries that are not the benchmarks': 1.79x -> 1.89x on its edits)
LOOKUP_LATER_PRIOR = 0.9
PRIOR_WEIGHT = 2.0
LOOKUP_DECAY = 0.9     # older rounds count less: the text may turn from copying to free writing and back
LOOKUP_RECOVER = 0.05  # per skipped window, the estimate moves this far back to the prior (so it can recover)


def verify_price(k: int, cost: float = VERIFY_COST, free: int = 0, costs: Sequence[float] | None = None) -> float:
    """What verifying k draft words adds to a plain step, in plain steps: costs[k - 1] where a backend tables it,
    `cost` per word past the table; without a table `cost` per word past the first `free`."""
    if costs:
        return costs[k - 1] if k <= len(costs) else costs[-1] + cost * (k - len(costs))
    return cost * max(0, k - free)


def best_window(n: int, p: float, cost: float = VERIFY_COST, free: int = 0, draft: float = 0.0,
                later: float | None = None, costs: Sequence[float] | None = None) -> int:
    """The k in 0..n maximising (1 + p + p q + ... + p q^(k-1)) / (1 + draft * k + price(k)): expected tokens per
    plain-step cost, with p the acceptance of a window's first token and q = `later` that of each further one once
    the tokens before it were accepted (None: p, one rate), and each draft token costing `draft` steps to propose.
    price(k), what verifying k draft tokens adds to a plain step: costs[k - 1] where a backend tables it (its
    verify_costs: a call's price is not linear where its kernels compute tokens in tiles), `cost` per token past the
    table; without a table cost * max(0, k - free), the first `free` draft tokens riding in a call that computes
    that many rows anyway (a backend's free_draft_tokens)."""
    q = p if later is None else later
    best, best_k, gain, term = 1.0, 0, 1.0, 1.0
    for k in range(1, n + 1):
        term *= p if k == 1 else q
        gain += term
        rate = gain / (1 + draft * k + verify_price(k, cost, free, costs))
        if rate > best + 1e-12:
            best, best_k = rate, k
    return best_k


def window_prices(n: int, cost: float = VERIFY_COST, free: int = 0, draft: float = 0.0,
                  costs: Sequence[float] | None = None) -> np.ndarray:
    """(n,) float32: what a window of k = 1..n draft words costs past a plain step, in plain steps: k * draft to
    propose it plus its verification (verify_price, as best_window prices it)."""
    return np.array([draft * k + verify_price(k, cost, free, costs) for k in range(1, n + 1)], np.float32)


def confidence_window(probs: Iterable[float], prices: Sequence[float]) -> int:
    """How many words of a greedy draft to verify from the draft's own probability of each of its words (EAGLE-2's
    dynamic window, for a chain): word k is kept while (1 + p1 + p1 p2 + ... + p1..pk) / (1 + prices[k - 1]), the
    expected words per plain-step cost, grows past the best so far (a plain step's 1 to start); the first word that
    does not raise it ends the window. A calibrated draft (heron's head is: BENCHMARKS.md "The head knows when it is
    right") sizes each window for the text at hand, not for the rounds before it. float32 arithmetic, as the native
    library's copy of the rule (heron_lm.c, hl_head_run), so both cut the same windows."""
    one = np.float32(1.0)
    gain, chance, best = one, one, one
    n = 0
    for price, p in zip(prices, probs):  # prices first: a lazy `probs` is not asked for a word past the prices
        chance = np.float32(chance * np.float32(p))
        gain = np.float32(gain + chance)
        rate = np.float32(gain / np.float32(one + np.float32(price)))
        if not rate > best:
            break
        best = rate
        n += 1
    return n


class Acceptance:
    """How often a drafter's tokens are accepted, counted apart at a window's first position and past it (decayed
    counts, each starting from `prior` weighted as PRIOR_WEIGHT tries): once a window's first token holds, the next
    ones hold more often where the draft copies a run of the context (prompt lookup on a code edit: ~0.7 then
    ~0.9 on SmolLM2) or follows the target's own features, and one pooled rate would cut such windows short."""

    def __init__(self, prior: float, decay: float, later_prior: float | None = None):
        self.prior, self.decay = prior, decay
        self.later_prior = prior if later_prior is None else later_prior  # a later position's prior (None: prior)
        self.counts = [0.0, 0.0, 0.0, 0.0]  # first position: hits, tries; later positions: hits, tries

    def observe(self, proposed: int, accepted: int) -> None:
        """After a verified window: `accepted` of its `proposed` tokens were kept (a position is tried only when
        every earlier one was accepted)."""
        if proposed < 1:
            return
        h1, t1, h2, t2 = (c * self.decay for c in self.counts)
        later_tries = min(accepted + 1, proposed) - 1
        self.counts = [h1 + (accepted >= 1), t1 + 1, h2 + max(0, accepted - 1), t2 + later_tries]

    def recover(self, keep: float) -> None:
        """A skipped window: the counts shrink by `keep`, so the rates drift back to the prior and drafting can
        resume."""
        self.counts = [c * keep for c in self.counts]

    def pooled(self) -> float:
        """One rate over every position, as the drafters counted before session 30 (benchmarks compare the two)."""
        h1, t1, h2, t2 = self.counts
        return (h1 + h2 + self.prior * PRIOR_WEIGHT) / (t1 + t2 + PRIOR_WEIGHT)

    def rates(self) -> tuple[float, float]:
        """(acceptance of a window's first token, acceptance of each later one after the ones before it held)."""
        h1, t1, h2, t2 = self.counts
        return ((h1 + self.prior * PRIOR_WEIGHT) / (t1 + PRIOR_WEIGHT),
                (h2 + self.later_prior * PRIOR_WEIGHT) / (t2 + PRIOR_WEIGHT))


# Windows priced as the rounds run (session 49; off by default: an A/B row of scripts/bench_smollm2_spec.py). A
# backend's table (verify_costs) is its calls' prices measured once on one machine, each call alone; with
# MEASURED_PRICES greedy decoding, whose words no window changes, prices each window by timing its rounds in use
# (RoundPrices: the draft's proposal, the verify call and the Python between, over a plain step timed in the same
# stream); sampling keeps the table, so that a seeded run draws the same words every time. On machine S (an Intel Xeon
# whose 480 MB L3 holds SmolLM2) it did not pay: whatever runs between two calls slows the next there, a plain step
# timed between rounds as much as a verify call, so the measured prices stayed near the table's and, pooled over
# prompts of different lengths, cut the code edit's windows (1.42x against the table's 1.52x; BENCHMARKS.md "What a
# round costs in use on S")
MEASURED_PRICES = False
PRICE_DECAY = 0.98       # per timed round of a source: older rounds count less (the context grows, the load moves)
PRICE_PRIOR_WEIGHT = 4.0  # the table's price of a window weighs as this many timed rounds of that window
# plain steps timed before a measured price is used (the first steps of a model's first answer run slow, so several),
# and rounds after which one more is timed where a draft always proposes (the head): made in place of a head window,
# which where a plain step is the alternative pays little more than one
PRICE_PLAIN_STEPS = 8
PRICE_REFRESH = 32
PRICE_SPIKE = 1.5        # a timed round counts as at most this many times its mean so far (a pause is not a price)


class RoundPrices:
    """What a speculative round with a window of k draft words costs on this machine, in plain steps, measured as
    decoding runs: a round's seconds (the draft's proposal, the target's verify call, the check, the Python between)
    over a plain step's (its proposal that found nothing, its call, its choice), each a decayed mean, per draft
    source ("lookup", "head": their proposals cost differently). A window length seldom timed keeps the prior
    (the table's price) weighted as PRICE_PRIOR_WEIGHT rounds, and one not timed lately drifts back to it, so a
    window that measured badly once is tried again. Until PRICE_PLAIN_STEPS plain steps are timed (and once every
    PRICE_REFRESH rounds, where a drafter always proposes: the head, not prompt lookup's copies, which pay too much to
    give up) `wants_plain` asks the drafter for a plain step. Kept on the target backend
    (`round_prices`), so a model's later answers start from what its earlier ones measured. `clock`: seconds
    (tests give a fake one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, n: int = 16):
        self.clock, self.n = clock, n
        self.plain = [0.0, 0.0]  # decayed sum of a plain step's seconds, its weight
        self.rounds: dict[str, np.ndarray] = {}  # source -> (n, 2): decayed sum of seconds, weight, per window k
        self.plain_steps, self.since_plain = 0, 0

    def record(self, source: str | None, k: int, seconds: float) -> None:
        """A timed round of source `source` with a window of k draft words (k = 0: a plain step). A round longer than
        PRICE_SPIKE times its mean so far (the first of a window: than 1.5 + k / 2 plain steps) counts as that long: a
        VM's pause or a first call's set-up is not the window's price."""
        if not (math.isfinite(seconds) and seconds > 0):
            return
        if k == 0:
            if self.plain[1] > 0:
                seconds = min(seconds, PRICE_SPIKE * self.plain[0] / self.plain[1])
            self.plain = [self.plain[0] * PRICE_DECAY + seconds, self.plain[1] * PRICE_DECAY + 1.0]
            self.plain_steps += 1
            self.since_plain = 0
            for table in self.rounds.values():  # windows no longer drafted drift back to the prior, to be tried again
                table *= PRICE_DECAY
            return
        if not 1 <= k <= self.n or source is None:
            return
        table = self.rounds.setdefault(source, np.zeros((self.n, 2)))
        t, w = table[k - 1]
        if w >= 0.5:
            seconds = min(seconds, PRICE_SPIKE * t / w)
        elif self.plain[1] > 0:
            seconds = min(seconds, (1.5 + k / 2) * self.plain[0] / self.plain[1])
        table *= PRICE_DECAY
        table[k - 1] += (seconds, 1.0)
        self.since_plain += 1

    def wants_plain(self, refresh: bool = True) -> bool:
        """Whether the next round should be a plain step, to time one: one of the first PRICE_PLAIN_STEPS, or
        (refresh) PRICE_REFRESH rounds after the last."""
        return self.plain_steps < PRICE_PLAIN_STEPS or (refresh and self.since_plain >= PRICE_REFRESH)

    def _timed(self, source: str) -> tuple[np.ndarray | None, float]:
        """(source's table of timed rounds, a plain step's mean seconds); (None, 0) before PRICE_PLAIN_STEPS plain
        steps are timed or where `source` never ran a round."""
        table = self.rounds.get(source)
        if table is None or self.plain_steps < PRICE_PLAIN_STEPS:
            return None, 0.0
        return table, self.plain[0] / self.plain[1]

    def prices(self, source: str, prior: Sequence[float]) -> np.ndarray:
        """(len(prior),) what a window of k = 1, 2, ... words of `source` adds to a plain step, in plain steps: the
        measured rounds' mean over the plain step's, less one, mixed with `prior` (the table's prices: what its
        proposal and verification add) weighted as PRICE_PRIOR_WEIGHT rounds; `prior` itself before
        PRICE_PLAIN_STEPS plain steps are timed."""
        prior = np.asarray(prior, np.float64)
        table, step = self._timed(source)
        if table is None:
            return prior
        m = min(len(prior), self.n)
        seconds, weight = table[:m, 0], table[:m, 1]
        measured = np.where(weight > 0, seconds / np.maximum(weight, 1e-12) / step - 1.0, 0.0)
        out = prior.copy()
        out[:m] = (weight * measured + PRICE_PRIOR_WEIGHT * prior[:m]) / (weight + PRICE_PRIOR_WEIGHT)
        return np.maximum(out, 0.0)

    def measured(self, source: str, least: float = 1.0) -> dict[int, float]:
        """{k: what a round of `source` with k draft words measured, in plain steps (not mixed with the prior)} for the
        windows timed at least `least` times (decayed); {} before PRICE_PLAIN_STEPS plain steps."""
        table, step = self._timed(source)
        if table is None:
            return {}
        return {k + 1: float(t / w / step) for k, (t, w) in enumerate(table) if w >= least}


def round_prices(target, opts: "GenerationOptions") -> RoundPrices | None:
    """The target's measured round prices (created on first use, kept on it as `round_prices`), where windows are
    priced by measurement: greedy decoding with MEASURED_PRICES; else None (the table's prices)."""
    if not MEASURED_PRICES or opts.temperature != 0:
        return None
    prices = getattr(target, "round_prices", None)
    if not isinstance(prices, RoundPrices):
        prices = RoundPrices()
        try:
            target.round_prices = prices
        except AttributeError:  # a backend that takes no attributes: this generation's own prices
            pass
    return prices


def _price(c) -> bool:
    """A price in plain steps: a number in [0, 10] (not a bool, not NaN)."""
    return isinstance(c, (int, float)) and not isinstance(c, bool) and 0.0 <= c <= 10.0


def verify_cost(backend) -> float:
    """What verifying one more draft token costs `backend`, in plain steps: its own `verify_cost` where it
    declares one (a number in [0, 10]), else VERIFY_COST."""
    cost = getattr(backend, "verify_cost", None)
    return float(cost) if _price(cost) else VERIFY_COST


def verify_costs(backend) -> tuple[float, ...] | None:
    """What verifying k = 1, 2, ... draft tokens adds to a plain step for `backend`, where it tables it (its
    `verify_costs`: up to 16 non-decreasing prices in [0, 10], constants of its kernels, never timings); else None
    (best_window prices each token at verify_cost)."""
    costs = getattr(backend, "verify_costs", None)
    if not isinstance(costs, tuple) or not 1 <= len(costs) <= 16 or not all(_price(c) for c in costs):
        return None
    if any(b < a for a, b in zip(costs, costs[1:])):
        return None
    return tuple(float(c) for c in costs)


def free_draft_tokens(backend) -> int:
    """Draft tokens a verify call of `backend` carries at a plain step's cost (its `free_draft_tokens`, 0-8:
    a graph that pads one-token calls to two rows verifies one draft token for nothing), else 0."""
    free = getattr(backend, "free_draft_tokens", 0)
    return free if isinstance(free, int) and not isinstance(free, bool) and 0 <= free <= 8 else 0


class LookupDrafter:
    """Prompt lookup as a Drafter: the window is copied from the context, its distributions one-hot;
    adaptive=True cuts it to the length that pays (best_window) from the acceptance seen so far, with
    `cost` the price of each verified draft token in plain steps (the target's verify_cost) past the first
    `free` ones (the target's free_draft_tokens)."""

    def __init__(self, vocab_size: int, stats: DecodeStats | None = None, adaptive: bool = True,
                 cost: float = VERIFY_COST, free: int = 0, costs: Sequence[float] | None = None,
                 prices: RoundPrices | None = None):
        self.vocab_size, self.stats, self.adaptive, self.cost, self.free = vocab_size, stats, adaptive, cost, free
        self.costs = costs
        self.prices = prices if adaptive else None  # windows priced by timing their rounds (greedy; RoundPrices)
        self.accepted = Acceptance(LOOKUP_PRIOR, LOOKUP_DECAY, LOOKUP_LATER_PRIOR)
        self.index = LookupIndex()
        self._source: str | None = None

    def observe(self, proposed: int, accepted: int) -> None:
        """After a verified window: `accepted` of its `proposed` tokens were kept."""
        self.accepted.observe(proposed, accepted)

    def timed(self, proposed: int, seconds: float) -> None:
        """After a round: it took `seconds` with a window of `proposed` words (0: a plain step)."""
        self.prices.record(self._source if proposed else None, proposed, seconds)

    def table(self, n: int) -> tuple[float, ...]:
        """What windows of 1..n words add to a plain step, in plain steps: measured (RoundPrices) where they are,
        the target's table elsewhere."""
        prior = [verify_price(k, self.cost, self.free, self.costs) for k in range(1, n + 1)]
        return tuple(self.prices.prices("lookup", prior)) if self.prices is not None else tuple(prior)

    def propose(self, seq: list[int], g: int) -> tuple[list[int], np.ndarray | None]:
        self._source = None
        window = self.index.window(seq, g)  # (the index kept up to date in every round: its work is no window's)
        # the first plain steps a model times; later ones come where the context has no match (none forced: copies
        # pay too much to give up)
        if self.prices is not None and self.prices.wants_plain(refresh=False):
            return [], None
        if window and self.adaptive:
            first, later = self.accepted.rates()
            costs = self.table(len(window)) if self.prices is not None else self.costs
            k = best_window(len(window), first, self.cost, self.free, later=later, costs=costs)
            if k == 0:  # not worth verifying now; drift back towards the prior so lookup can resume
                self.accepted.recover(1 - LOOKUP_RECOVER)
            window = window[:k]
        if not window:
            return [], None
        self._source = "lookup"
        if self.stats is not None:
            self.stats.draft_calls += len(window)
        return window, None  # a deterministic draft: one-hot distributions, built only where sampling needs them
