"""Phoneme-posterior keyword matching (numpy): the keyword's CTC path against a free phoneme loop.

For a keyword with phoneme classes y_1..y_N, a Viterbi pass over the encoder's per-frame phoneme
log-probabilities finds, for every end frame, the best alignment of the whole keyword that may
start at any earlier frame (a subsequence match of the stream). Each frame on that path contributes
its log-likelihood ratio against the best class at that frame (the "filler"), so a frame costs
nothing when the keyword's phoneme is what the encoder hears and a lot when another phoneme is.
The path total divided by N is the per-phoneme mismatch; exp() of it maps to (0, 1], comparable
across keywords of different lengths.

With `posterior_weight` w > 0 a frame also pays w times the absolute log-probability of the keyword's
class: frames where the encoder is unsure of every class (accented, child or far-field speech, where
the ratio alone is near 0 for many classes at once) no longer match any keyword for free.

Keywords are bounded in length (SLiCK's premise), so a path may not last longer than
`max_frames` (default: 10 + 8 frames per phoneme, 2.6 s for 7 phonemes at 40 ms frames), and each
blank frame *inside* the keyword costs `gap_penalty` nats: without these, a path can collect a
keyword's phonemes one by one from sporadic frames spread over many seconds of noise.

Streaming is exact: the Viterbi vector is the state, carried from chunk to chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NEG = -1e9
SCORE_FLOOR = float(np.exp(-50.0))  # the lowest per-phoneme score a matcher reports (exp of -50 nats)


@dataclass(frozen=True)
class MatcherOptions:
    """The first-stage matcher's settings; a bundle's manifest carries them (`matcher`)."""

    gap_penalty: float = 0.1      # nats per blank frame inside the keyword
    frames_base: int = 10         # a keyword path lasts at most frames_base + frames_per_phoneme * N frames
    frames_per_phoneme: int = 8
    posterior_weight: float = 0.0  # w: a frame scores (1 + w) log p(state) - max_c log p(c); 0 = the ratio alone

    # the manifest's `matcher` section: every field required, in these ranges (one definition, used by
    # the bundle check, the runtime and export)
    RANGES = {"gap_penalty": (0.0, 10.0), "frames_base": (1, 1000), "frames_per_phoneme": (1, 100),
              "posterior_weight": (0.0, 10.0)}

    @classmethod
    def from_dict(cls, section: object, where: str) -> "MatcherOptions":
        """The manifest's `matcher` section, checked (types, ranges, no unknown fields): BundleError otherwise."""
        from heron.runtime.manifest import Fields

        f = Fields({"matcher": section}, where)
        f.only("matcher", cls.RANGES)
        return cls(**{name: (f.int if isinstance(lo, int) else f.float)(f"matcher.{name}", lo, hi)
                      for name, (lo, hi) in cls.RANGES.items()})

    def to_dict(self) -> dict:
        """The manifest's `matcher` section (what `from_dict` reads back)."""
        return {name: getattr(self, name) for name in self.RANGES}


def frame_scores(log_probs: np.ndarray, posterior_weight: float = 0.0) -> np.ndarray:
    """What each class scores at each frame (last axis: classes): its log-likelihood ratio against the
    frame's best class, plus `posterior_weight` times its own log-probability. All <= 0."""
    llr = log_probs - log_probs.max(axis=-1, keepdims=True)
    return llr + posterior_weight * log_probs if posterior_weight else llr


@dataclass
class CTCMatchState:
    score: np.ndarray  # (S,) best path LLR ending in each state (states: y1, b, y2, b, ..., yN)
    start: np.ndarray  # (S,) start frame of that path
    frame: int  # frames consumed so far


class CTCKeywordMatcher:
    """Matches one keyword (CTC class ids, blank = 0) against frames of phoneme log-probabilities."""

    def __init__(self, classes: list[int] | tuple[int, ...], options: MatcherOptions = MatcherOptions(),
                 blank: int = 0, max_frames: int | None = None):
        if not classes:
            raise ValueError("keyword has no phonemes")
        if any(c == blank for c in classes):
            raise ValueError("keyword classes must not contain the blank")
        y = np.asarray(classes, np.int64)
        self.n = len(y)
        self.blank = blank
        # states: label y1, blank, label y2, blank, ..., label yN  (no leading blank: starts are free)
        labels = np.full(2 * self.n - 1, blank, np.int64)
        labels[0::2] = y
        self.labels = labels
        # a label state may be entered from two states back (skipping the blank) unless it repeats
        self.skip_ok = np.zeros(len(labels), bool)
        for s in range(2, len(labels), 2):
            self.skip_ok[s] = labels[s] != labels[s - 2]
        self.max_frames = max_frames or options.frames_base + options.frames_per_phoneme * self.n
        self.posterior_weight = float(options.posterior_weight)
        # per-frame cost of each state: blanks between phonemes pay the gap penalty
        self.state_cost = np.where(labels == blank, options.gap_penalty, 0.0)

    def init_state(self, frame: int = 0) -> CTCMatchState:
        """A fresh state whose first frame has absolute index `frame` (a keyword added to a running
        stream starts at the stream's current frame, so its start/end frames are the stream's)."""
        S = len(self.labels)
        return CTCMatchState(np.full(S, _NEG), np.full(S, frame, np.int64), frame)

    def step(self, log_probs: np.ndarray, state: CTCMatchState) -> tuple[np.ndarray, np.ndarray, CTCMatchState]:
        """log_probs: (T, classes) -> (per-frame score in (0, 1], path start frame, new state).

        The score at frame t is for a keyword whose last phoneme is at frame t.
        """
        llr = frame_scores(np.asarray(log_probs, np.float64), self.posterior_weight)  # (T, classes), <= 0
        score, start = state.score.copy(), state.start.copy()
        T = llr.shape[0]
        out_score = np.empty(T)
        out_start = np.empty(T, np.int64)
        for t in range(T):
            f = state.frame + t
            stay = score
            prev = np.concatenate([[0.0], score[:-1]])  # state 0 may (re)start at this frame with 0
            prev_start = np.concatenate([[f], start[:-1]])
            prev2 = np.where(self.skip_ok, np.concatenate([[_NEG, _NEG], score[:-2]])[:len(score)], _NEG)
            prev2_start = np.concatenate([[f, f], start[:-2]])[:len(score)]
            cand = np.stack([stay, prev, prev2])  # (3, S)
            which = cand.argmax(axis=0)
            best = cand[which, np.arange(len(score))]
            start = np.where(which == 0, start, np.where(which == 1, prev_start, prev2_start))
            score = best + llr[t, self.labels] - self.state_cost
            score[f - start >= self.max_frames] = _NEG  # too long to be one keyword
            out_score[t] = score[-1]
            out_start[t] = start[-1]
        new_state = CTCMatchState(score, start, state.frame + T)
        return np.exp(np.maximum(out_score, -50.0 * self.n) / self.n), out_start, new_state

    def max_scores_batch(self, log_probs: np.ndarray) -> np.ndarray:
        """Best raw score of the keyword in each of B independent segments (B, T, classes) -> (B,).

        The same recursion as `step`, vectorized over segments (used to score a keyword against a
        background bank at enrollment in a few milliseconds).
        """
        llr = frame_scores(np.asarray(log_probs, np.float32), self.posterior_weight)  # (B, T, classes)
        B, T, _ = llr.shape
        S = len(self.labels)
        score = np.full((B, S), _NEG, np.float32)
        start = np.zeros((B, S), np.int64)
        best = np.full(B, _NEG, np.float32)
        lab_llr = llr[:, :, self.labels]  # (B, T, S)
        skip = self.skip_ok[None]
        cost = self.state_cost[None].astype(np.float32)
        for t in range(T):
            prev = np.concatenate([np.zeros((B, 1), np.float32), score[:, :-1]], axis=1)
            prev_start = np.concatenate([np.full((B, 1), t), start[:, :-1]], axis=1)
            prev2 = np.where(skip, np.concatenate([np.full((B, 2), _NEG, np.float32), score[:, :-2]], axis=1)[:, :S], _NEG)
            prev2_start = np.concatenate([np.full((B, 2), t), start[:, :-2]], axis=1)[:, :S]
            cand = np.stack([score, prev, prev2])  # (3, B, S)
            which = cand.argmax(axis=0)
            new = np.take_along_axis(cand, which[None], axis=0)[0]
            start = np.where(which == 0, start, np.where(which == 1, prev_start, prev2_start))
            score = new + lab_llr[:, t] - cost
            score[t - start >= self.max_frames] = _NEG
            best = np.maximum(best, score[:, -1])
        return np.exp(np.maximum(best, -50.0 * self.n) / self.n)


class CTCMatcherBank:
    """Several keywords' matchers stepped together: one Viterbi update per frame for all of them.

    The keywords' state vectors are packed into a (K, S_max) array (padding states lie past each
    keyword's last state: paths only move forward, so they never reach a real state). Scores and
    starts equal each matcher's own `step` exactly; a stream with ten keywords pays one update per
    frame instead of ten.
    """

    def __init__(self, matchers: list[CTCKeywordMatcher] | tuple[CTCKeywordMatcher, ...]):
        if not matchers:
            raise ValueError("a matcher bank needs at least one keyword")
        self.matchers = tuple(matchers)
        K, S = len(matchers), max(len(m.labels) for m in matchers)
        self.labels = np.zeros((K, S), np.int64)
        self.skip_ok = np.zeros((K, S), bool)
        self.state_cost = np.zeros((K, S))
        for k, m in enumerate(matchers):
            s = len(m.labels)
            self.labels[k, :s], self.skip_ok[k, :s], self.state_cost[k, :s] = m.labels, m.skip_ok, m.state_cost
            self.labels[k, s:] = m.blank
        weights = {m.posterior_weight for m in matchers}
        if len(weights) != 1:
            raise ValueError("the keywords of one matcher bank must share the matcher options (posterior_weight)")
        self.posterior_weight = weights.pop()
        self.last = np.array([len(m.labels) - 1 for m in matchers])
        self.n = np.array([m.n for m in matchers], np.float64)
        self.max_frames = np.array([m.max_frames for m in matchers])[:, None]
        self._rows = np.arange(K)

    def pack(self, states: list[CTCMatchState]) -> CTCMatchState:
        """The keywords' own states (all at the same frame) as one packed state."""
        frames = {s.frame for s in states}
        if len(states) != len(self.matchers) or len(frames) != 1:
            raise ValueError("pack needs one state per keyword, all at the same frame")
        score = np.full(self.labels.shape, _NEG)
        start = np.zeros(self.labels.shape, np.int64)
        for k, s in enumerate(states):
            score[k, :len(s.score)], start[k, :len(s.start)] = s.score, s.start
            start[k, len(s.start):] = s.frame
        return CTCMatchState(score, start, frames.pop())

    def unpack(self, state: CTCMatchState) -> list[CTCMatchState]:
        """The packed state as each keyword's own state (for `CTCKeywordMatcher.step`)."""
        return [CTCMatchState(state.score[k, :len(m.labels)].copy(), state.start[k, :len(m.labels)].copy(), state.frame)
                for k, m in enumerate(self.matchers)]

    def init_state(self, frame: int = 0) -> CTCMatchState:
        """Every keyword starting afresh at `frame` (what `pack` of the matchers' own fresh states gives; a
        stream calls it for every chunk the speech gate closes)."""
        return CTCMatchState(np.full(self.labels.shape, _NEG), np.full(self.labels.shape, frame, np.int64), frame)

    def step(self, log_probs: np.ndarray, state: CTCMatchState) -> tuple[np.ndarray, np.ndarray, CTCMatchState]:
        """log_probs: (T, classes) -> (scores (T, K) in (0, 1], path starts (T, K), new packed state)."""
        llr = frame_scores(np.asarray(log_probs, np.float64), self.posterior_weight)
        lab_llr = llr[:, self.labels]  # (T, K, S)
        score, start = state.score.copy(), state.start.copy()
        T, K = llr.shape[0], len(self.matchers)
        out_score = np.empty((T, K))
        out_start = np.empty((T, K), np.int64)
        prev, prev_start = np.empty_like(score), np.empty_like(start)
        prev2, prev2_start = np.full_like(score, _NEG), np.empty_like(start)
        prev[:, 0] = 0.0  # state 0 may (re)start at any frame with 0
        for t in range(T):
            f = state.frame + t
            prev[:, 1:], prev_start[:, 1:], prev_start[:, 0] = score[:, :-1], start[:, :-1], f
            prev2[:, 2:], prev2_start[:, 2:], prev2_start[:, :2] = score[:, :-2], start[:, :-2], f  # S >= 1
            # the first best of (stay, from the previous state, skipping a blank), as argmax picks it
            take1 = prev > score
            best = np.where(take1, prev, score)
            start = np.where(take1, prev_start, start)
            take2 = self.skip_ok & (prev2 > best)
            best = np.where(take2, prev2, best)
            start = np.where(take2, prev2_start, start)
            score = best + lab_llr[t] - self.state_cost
            score[f - start >= self.max_frames] = _NEG
            out_score[t] = score[self._rows, self.last]
            out_start[t] = start[self._rows, self.last]
        new_state = CTCMatchState(score, start, state.frame + T)
        return np.exp(np.maximum(out_score, -50.0 * self.n) / self.n), out_start, new_state
