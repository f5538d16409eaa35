"""Mirror speculative decoding (Mirror-SD): the draft runs beside the target, in parallel (on another device, or here
another thread), and builds the branches the target's verify may need next, so a round does not wait for the draft;
lossless like every method of heron.runtime.decoding's one engine, whose rounds, caches and sampler it uses.
numpy only; the backends do the compute."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from heron.runtime.decoding import (DEFAULT_KAPPA, CachedBackend, DecodeStats, DraftRunner, DraftSeeds,
                                    GenerationOptions, SpeculativeOptions, draw, plain_loop, probs, room,
                                    serial_window, start_draft, verify_round)
from heron.runtime.lm import Token


@dataclass
class _Branch:
    depth: int                 # accepted draft tokens this branch assumes
    root: int                  # the correction token it assumes at that depth
    window: list[int]          # the gamma draft tokens after root
    qs: np.ndarray             # their draft distributions
    state: object              # draft backend snapshot holding prefix + window[:depth] + root + window'[:-1]
    ids: list[int]             # the token ids of that state


def _branch_order(early_logits: np.ndarray, window: list[int], kappa: int,
                  alpha: float) -> list[tuple[int, int, float]]:
    """(depth, candidate, score) ranked by P(depth) x P_exit(candidate): the draft builds the most likely
    correction paths first. Depth j < gamma means "rejected at j" (the candidate must differ from the
    draft token there); depth gamma means "all accepted" (the candidate is the bonus token)."""
    g = len(window)
    p_exit = probs(early_logits, 1.0, 1.0)
    out = []
    for j in range(g + 1):
        p_depth = alpha ** j * ((1 - alpha) if j < g else 1.0)
        cands = [int(c) for c in np.argsort(-p_exit[j])[:kappa + 1] if j == g or int(c) != window[j]][:kappa]
        out += [(j, c, p_depth * float(p_exit[j, c])) for c in cands]
    return sorted(out, key=lambda r: -r[2])


def _build_branches(draft, base_state, base_ids: list[int], seq_len: int, window: list[int],
                    order, gamma: int, opts: GenerationOptions, seeds: DraftSeeds, cancel: threading.Event,
                    out: dict, budget: int) -> None:
    """Draft thread: expand candidate corrections into rollouts until cancelled or out of budget. A root of
    None (depth gamma only) is the draft's own likeliest word after the whole window: its guess of the target's
    bonus word, so that a round that accepts everything finds its next window built (no early exit needed)."""
    for depth, root, _ in order[:budget]:
        if cancel.is_set():
            return
        if (depth, root) in out:
            continue
        rng = seeds.at(seq_len + depth + 1)  # the window continues prefix + window[:depth] + root
        keep = seq_len + depth  # positions of prefix + window[:depth]; the base state holds prefix + window[:-1]
        draft.restore(base_state)
        if keep > len(base_ids):  # window[:depth] is not all cached (depth == gamma)
            tail = draft.forward(window[len(base_ids) - seq_len:depth], last=1)
            if root is None:
                root = int(np.argmax(tail[-1]))  # a guess, not a draw: the seeded draws stay the window's
                if (depth, root) in out:
                    continue
        elif root is None:
            continue
        else:
            draft.trim(len(base_ids) - keep)
        ids = (base_ids[:seq_len] + window)[:keep]
        feed, toks, qs = [root], [], []
        for _ in range(gamma):
            if cancel.is_set():
                return
            q = probs(draft.forward(feed, last=1)[-1], *opts.sampling)
            ids += feed
            t = draw(q, rng)
            toks.append(t)
            qs.append(q)
            feed = [t]
        out[(depth, root)] = _Branch(depth, root, toks, np.stack(qs), draft.snapshot(), ids)


# Mirror-SD with kappa 0 at temperature 0, windows as the draft makes them (PEARL's drafting beside verification, arXiv
# 2408.11850, in Mirror-SD's setting): the draft writes its greedy continuation of the sequence on its own thread without
# pausing, while the target verifies what it had written before. A window the target accepts whole, whose next word is the
# draft's own next word, leaves that continuation valid: the next window is what the draft wrote meanwhile (up to
# gamma), no wait. A rejected word ends it: the draft restarts from the correction and the target waits only for the
# first AHEAD_LEAST-th of a window. With fixed windows a round whose prepared branch is not reused waits for gamma draft
# steps, and a round never verifies more than the branch built beside the last one. The two constants: SmolLM2's chat
# questions on Z (2 cores, the fp32 torch target, its int8 graph as the draft), timed in a throw-away script at windows
# 12 and 16 (no figure claimed, BENCHMARKS.md "Mirror-SD with windows as the draft writes them"): a first wait of a
# twelfth or a half of gamma decoded no faster than a quarter, and a draft at most one window ahead slower (the next
# window is cut short while the current one is verified).
AHEAD_LEAST = 4   # after a miss the target waits for ceil(gamma / AHEAD_LEAST) draft words (at least one)
AHEAD_SPAN = 2    # the draft runs at most AHEAD_SPAN * gamma + 1 words past the verified sequence


class _Ahead:
    """The draft's greedy continuation of the sequence, written on the runner's thread without pause: tokens[i]
    continues seq[:start] + tokens[:i]; tokens[:base] have been verified into the sequence. It pauses `span` tokens
    past base, or when the draft's cache would pass `cap` positions, until the target moves base on (advance)."""

    def __init__(self, runner: DraftRunner, dc: CachedBackend, seq: list[int], span: int, cap: int,
                 stats: DecodeStats):
        self.cond = threading.Condition()
        self.tokens: list[int] = []
        self.start, self.base, self.span, self.cap = len(seq), 0, span, cap
        self.cancel = threading.Event()
        self.fut = runner.submit(self._run, dc, list(seq), stats)

    def _full(self) -> bool:
        return len(self.tokens) - self.base >= self.span or self.start + len(self.tokens) >= self.cap

    def _run(self, dc: CachedBackend, seq: list[int], stats: DecodeStats) -> None:
        feed = dc.sync(seq, len(seq))  # the draft's cache: trimmed to what it shares with the sequence
        while True:
            with self.cond:
                while self._full() and not self.cancel.is_set():
                    self.cond.wait()
                if self.cancel.is_set():
                    return
            tok = int(np.argmax(dc.forward(feed, last=1)[-1]))
            with self.cond:
                self.tokens.append(tok)
                self.cond.notify_all()
            stats.draft_calls += 1
            feed = [tok]

    def wait(self, n: int, timeout_s: float) -> int:
        """Blocks until n tokens past base are written, no more can come (the cap; the draft failed) or timeout_s
        passed; -> the tokens past base."""
        deadline = time.perf_counter() + timeout_s
        with self.cond:
            while len(self.tokens) - self.base < n and not self._full() and not self.fut.done():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.cond.wait(left)
            return len(self.tokens) - self.base

    def advance(self, n: int) -> None:
        with self.cond:
            self.base += n
            self.cond.notify_all()

    def stop(self, runner: DraftRunner) -> None:
        """Cancels and joins the draft's thread (within the runner's timeout): the draft's cache is the caller's again,
        or runner.failed says why not."""
        self.cancel.set()
        with self.cond:
            self.cond.notify_all()
        runner.result(self.fut)


def _mirror_ahead(target, draft, prompt: Sequence[int], opts: GenerationOptions, spec: SpeculativeOptions,
                  stats: DecodeStats | None, detok: Callable | None) -> Iterator[Token]:
    """Mirror-SD, kappa 0, greedy, with windows as the draft writes them (the block comment above AHEAD_LEAST)."""
    gamma = spec.gamma
    span = AHEAD_SPAN * gamma + 1
    stats, rng, _, tc, dc, seq, em, runner = start_draft(target, draft, prompt, opts, spec, stats, detok, "mirror",
                                                         draft_ahead=span + 1)
    stats.drafted_ahead = True
    max_len = min(target.max_len, draft.max_len)
    # the draft's cache never passes the room fresh() reserved (nor the context): a window and its next word always fit
    cap = min(max_len, len(prompt) + opts.max_new_tokens + span + 1)
    least = -(-gamma // AHEAD_LEAST)
    ahead = None

    def waited(n: int) -> int:
        t1 = time.perf_counter()
        have = ahead.wait(n, spec.draft_timeout_s)
        stats.draft_time_s += time.perf_counter() - t1
        return have
    try:
        while not em.done:
            g = room(seq, max_len, gamma)
            if g == 0:
                break
            if ahead is None:
                ahead = _Ahead(runner, dc, seq, span, cap, stats)
            have = waited(min(g, least))
            if have < min(g, least):  # the draft failed or stalled: the target goes on alone (a stalled call is
                if ahead.fut.done():  # left behind, as DraftRunner leaves it)
                    runner.result(ahead.fut)
                stats.fallback = runner.failed or f"draft stalled (no answer in {spec.draft_timeout_s:.1f} s)"
                ahead.cancel.set()
                ahead = None
                break
            k = min(have, g)
            window = ahead.tokens[ahead.base:ahead.base + k]
            n_before = len(seq)
            yield from verify_round(tc, seq, window, None, opts, stats, rng, em)
            if em.done:
                break
            if stats.accepted[-1] == k and waited(k + 1) > k and ahead.tokens[ahead.base + k] == seq[n_before + k]:
                ahead.advance(k + 1)  # the whole window and the draft's next word: its continuation goes on
                stats.branch_hits += 1
                continue
            stats.branch_misses += 1
            ahead.stop(runner)
            ahead = None
            if runner.failed:
                stats.fallback = runner.failed
                break
        if ahead is not None:
            ahead.stop(runner)
            ahead = None
        if not em.done:
            yield from plain_loop(tc, seq, opts, stats, rng, em)
    finally:
        if ahead is not None:  # the caller stopped early: the draft's thread ends before its cache is used again
            ahead.stop(runner)
        runner.close()


def mirror_kappa(target, spec: SpeculativeOptions) -> int:
    """Mirror-SD's early-exit candidates per position: spec.kappa, or where it is None DEFAULT_KAPPA if the target
    has an exit head trained for spec.exit_layer (only such a head names the target's words well), else 0."""
    if spec.kappa is not None:
        return spec.kappa
    head = getattr(target, "exit_head", None)
    return DEFAULT_KAPPA if head is not None and getattr(head, "layer", None) == spec.exit_layer else 0


def mirror(target, draft, prompt: Sequence[int], opts: GenerationOptions = GenerationOptions(),
           spec: SpeculativeOptions = SpeculativeOptions(method="mirror"), stats: DecodeStats | None = None,
           detok: Callable | None = None) -> Iterator[Token]:
    """Mirror speculative decoding (arXiv 2510.13161), lossless.

    Each round the target runs its layers below `exit_layer` on [last token, draft window], sends the
    early-exit head's top-kappa tokens per position to the draft, and runs its upper layers while the
    draft, on its own thread and device, builds rollouts for the most likely (rejection depth,
    correction token) pairs. After verification, a rollout whose depth and root equal the accepted
    length and the correction token becomes the next window at no further draft cost; otherwise the
    draft computes the window serially, as in classic speculative decoding. Before the target's lower layers
    start, the draft thread builds the branch of a round that accepts everything: the window's own
    continuation after the draft's likeliest next word (its guess of the target's bonus word), the likeliest
    branch when the draft agrees with the target, and one that needs no early exit. kappa 0 builds only that
    one and runs the target as one forward (no exit head over the vocabulary, no prefix/suffix split), and since it
    builds one branch at a time its draft need only rewind (kappa >= 1 needs a draft whose states fork).

    Greedy with kappa 0 (unless spec.fixed_windows) the draft never pauses between rounds: it keeps writing its
    continuation while the target verifies, and each window is what it has written by then, up to gamma
    (_mirror_ahead). Sampling keeps windows of gamma: their draws are keyed by where each window starts (DraftSeeds),
    which timing-dependent windows would make irreproducible for a seed.
    """
    gamma, exit_layer = spec.gamma, spec.exit_layer
    n_layers = getattr(getattr(getattr(target, "model", None), "cfg", None), "n_layers", None)
    if n_layers is not None and not 1 <= exit_layer < n_layers:  # refused whatever kappa: a bad option is bad input
        raise ValueError(f"--exit-layer must be in [1, {n_layers - 1}], got {exit_layer}")
    kappa = mirror_kappa(target, spec)
    if kappa and not getattr(draft, "branchable", False):  # kappa 0: one branch at a time, a rewind suffices
        raise ValueError(f"Mirror-SD's early-exit branches (kappa {kappa}) need a draft that keeps independent branch "
                         f"states (an onnxruntime bundle whose states grow, such as the shipped draft); {draft.name} "
                         "cannot (kappa 0 needs none)")
    if kappa and not hasattr(target, "prefix"):
        raise ValueError(f"the Mirror-SD target needs an early-exit split (prefix/suffix) for kappa {kappa}; "
                         f"{target.name} has none (kappa 0 needs none)")
    if not kappa and opts.temperature == 0 and not spec.fixed_windows:
        yield from _mirror_ahead(target, draft, prompt, opts, spec, stats, detok)
        return
    stats, rng, draft_rng, tc, dc, seq, em, runner = start_draft(target, draft, prompt, opts, spec, stats, detok,
                                                                 "mirror")
    alpha = 0.5  # running estimate of the per-token acceptance, to rank branches
    window = qs = None
    try:
        while not em.done:
            g = room(seq, min(target.max_len, draft.max_len), gamma)
            if g == 0:
                break
            if window is None or len(window) != g:  # first round, a miss, or the context's end: serial window
                res = serial_window(runner, dc, seq, g, opts, draft_rng, stats)
                if res is None:
                    break
                window, qs = res
            # the draft thread starts at once on the branch "every draft word accepted, then the draft's own
            # next word" (its window's own continuation: no early exit needed, so it overlaps the target's
            # lower layers too); then the target's prefix on [last, window] ranks the early-exit candidates
            feed = tc.sync(seq, len(seq)) + list(window)
            cancel, own_cancel, built = threading.Event(), threading.Event(), {}
            base_state, base_ids, seq_len = draft.snapshot(), list(dc.ids), len(seq)
            own = runner.submit(_build_branches, draft, base_state, base_ids, seq_len, window, [(g, None, 1.0)], g,
                                opts, draft_rng, own_cancel, built, 1)
            t0 = time.perf_counter()
            fut = None
            if kappa:
                early = target.prefix(feed, exit_layer)[-(g + 1):]
                order = _branch_order(early, window, kappa, alpha)
                fut = runner.submit(_build_branches, draft, base_state, base_ids, seq_len, window, order, g, opts,
                                    draft_rng, cancel, built, kappa * (g + 1))
                logits = target.suffix()[-(g + 1):]  # the target's upper layers run while the draft works
            else:  # no early exit: one forward of the target, the draft's own continuation beside it
                logits = target.forward(feed, last=g + 1)[-(g + 1):]
            tc.ids.extend(feed)
            stats.target_time_s += time.perf_counter() - t0
            stats.target_calls += 1
            cancel.set()  # the early-exit candidates' rollouts stop with the target
            n_before = len(seq)
            yield from verify_round(tc, seq, window, qs, opts, stats, rng, em, logits)
            n_acc = stats.accepted[-1]
            if n_acc < g or em.done:  # the own continuation assumed every draft word accepted: not needed now
                own_cancel.set()
            t1 = time.perf_counter()  # else it is finished, not dropped: what is left of it costs less than
            runner.result(own)  # building the next window from scratch, and it is the likeliest next window
            if fut is not None:
                runner.result(fut)
            stats.draft_time_s += time.perf_counter() - t1
            if runner.failed:
                stats.fallback = runner.failed
                break
            stats.branches_built += len(built)
            alpha = 0.9 * alpha + 0.1 * (n_acc / g)
            hit = built.get((n_acc, seq[n_before + n_acc])) if len(seq) > n_before + n_acc else None
            if hit is not None:
                stats.branch_hits += 1
                draft.restore(hit.state)
                dc.ids = list(hit.ids)
                window, qs = hit.window, hit.qs
            else:
                stats.branch_misses += 1
                draft.restore(base_state)
                dc.ids = list(base_ids)
                window = None
        if not em.done:
            yield from plain_loop(tc, seq, opts, stats, rng, em)
    finally:
        runner.close()
