"""Phoneme-posterior keyword matching (numpy): the keyword's CTC path against a free phoneme loop.

For a keyword with phoneme classes y_1..y_N, a Viterbi pass over the encoder's per-frame phoneme
log-probabilities finds, for every end frame, the best alignment of the whole keyword that may
start at any earlier frame (a subsequence match of the stream). Each frame on that path contributes
its log-likelihood ratio against the best class at that frame (the "filler"), so a frame costs
nothing when the keyword's phoneme is what the encoder hears and a lot when another phoneme is.
The path total divided by N is the per-phoneme mismatch; exp() of it maps to (0, 1], comparable
across keywords of different lengths.

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


@dataclass(frozen=True)
class MatcherOptions:
    """The first-stage matcher's settings; a bundle's manifest carries them (`matcher`)."""

    gap_penalty: float = 0.1      # nats per blank frame inside the keyword
    frames_base: int = 10         # a keyword path lasts at most frames_base + frames_per_phoneme * N frames
    frames_per_phoneme: int = 8


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
        lp = np.asarray(log_probs, np.float64)
        llr = lp - lp.max(axis=1, keepdims=True)  # (T, classes), <= 0
        score, start = state.score.copy(), state.start.copy()
        T = lp.shape[0]
        out_score = np.empty(T)
        out_start = np.empty(T, np.int64)
        for t in range(T):
            f = state.frame + t
            stay = score
            prev = np.concatenate([[0.0], score[:-1]])  # state 0 may (re)start at this frame with 0
            prev_start = np.concatenate([[f], start[:-1]])
            prev2 = np.where(self.skip_ok, np.concatenate([[_NEG, _NEG], score[:-2]]), _NEG)
            prev2_start = np.concatenate([[f, f], start[:-2]])
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
        lp = np.asarray(log_probs, np.float32)
        llr = lp - lp.max(axis=2, keepdims=True)  # (B, T, classes)
        B, T, _ = lp.shape
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
            prev2 = np.where(skip, np.concatenate([np.full((B, 2), _NEG, np.float32), score[:, :-2]], axis=1), _NEG)
            prev2_start = np.concatenate([np.full((B, 2), t), start[:, :-2]], axis=1)
            cand = np.stack([score, prev, prev2])  # (3, B, S)
            which = cand.argmax(axis=0)
            new = np.take_along_axis(cand, which[None], axis=0)[0]
            start = np.where(which == 0, start, np.where(which == 1, prev_start, prev2_start))
            score = new + lab_llr[:, t] - cost
            score[t - start >= self.max_frames] = _NEG
            best = np.maximum(best, score[:, -1])
        return np.exp(np.maximum(best, -50.0 * self.n) / self.n)
