"""CTC forced alignment (numpy Viterbi) and the representative phoneme vectors built from it.

Representative phoneme vectors (arXiv 2308.06472): the mean of the trained audio encoder's frame
embeddings over every frame that forced alignment assigns to a phoneme, across many utterances.
They put text into the audio embedding space: the text encoder starts from them.
"""
from __future__ import annotations

import numpy as np

from heron.runtime.phonemes import PHONEMES

from heron.models.conformer import BLANK  # the CTC blank class, defined with the model


def forced_align(log_probs: np.ndarray, targets: list[int] | tuple[int, ...]) -> np.ndarray | None:
    """log_probs (T, C), targets (U,) class ids -> (T,) index of the target each frame emits, -1 = blank.

    Returns None when the utterance is too short for its targets.
    """
    T = log_probs.shape[0]
    U = len(targets)
    S = 2 * U + 1
    labels = np.zeros(S, np.int64)
    labels[1::2] = targets
    need = U + sum(1 for a, b in zip(targets, targets[1:]) if a == b)
    if U == 0 or T < need:
        return None
    neg = -1e30
    dp = np.full(S, neg)
    dp[0] = log_probs[0, BLANK]
    dp[1] = log_probs[0, labels[1]]
    back = np.zeros((T, S), np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    skip_ok = np.zeros(S, bool)
    skip_ok[3::2] = labels[3::2] != labels[1:-2:2]
    for t in range(1, T):
        prev1 = np.concatenate([[neg], dp[:-1]])
        prev2 = np.where(skip_ok, np.concatenate([[neg, neg], dp[:-2]]), neg)
        cand = np.stack([dp, prev1, prev2])
        back[t] = cand.argmax(0)
        dp = cand.max(0) + log_probs[t, labels]
    s = S - 1 if dp[S - 1] >= dp[S - 2] else S - 2
    if dp[s] <= neg / 2:
        return None
    path = np.empty(T, np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return np.where(path % 2 == 1, (path - 1) // 2, -1)


class PhonemeTable:
    """Accumulates frame embeddings per phoneme; `vectors()` gives the (39, D) table of means."""

    def __init__(self, dim: int):
        self.sums = np.zeros((len(PHONEMES), dim))
        self.counts = np.zeros(len(PHONEMES))

    def add(self, emb: np.ndarray, log_probs: np.ndarray, targets: list[int]) -> bool:
        align = forced_align(log_probs, targets)
        if align is None:
            return False
        for t, u in enumerate(align):
            if u >= 0:
                p = targets[u] - 1  # class id -> phoneme index
                self.sums[p] += emb[t]
                self.counts[p] += 1
        return True

    def vectors(self) -> np.ndarray:
        mean = self.sums / np.maximum(self.counts, 1)[:, None]
        missing = self.counts == 0
        if missing.any():  # a phoneme never aligned (rare ones like ZH with little data): global mean
            mean[missing] = self.sums.sum(0) / max(1.0, self.counts.sum())
        return mean.astype(np.float32)
