"""Dynamic Sequence Partitioning (arXiv 2306.05245, our reading), numpy.

Partition an audio embedding sequence (T, D) into W contiguous word segments, in order, maximizing
the summed cosine similarity between each segment's mean embedding and its word's text embedding.
The optimal partition comes from dynamic programming over segment ends (O(W * T * L) with a maximum
segment length L), and its boundaries are word-level timestamps.
"""
from __future__ import annotations

import numpy as np


def dsp_partition(audio: np.ndarray, words: np.ndarray, max_seg: int | None = None, min_seg: int = 1,
                  cover: bool = True, voiced: np.ndarray | None = None) -> tuple[float, list[tuple[int, int]]]:
    """audio: (T, D), words: (W, D) -> (mean cosine over words, [(start, end_exclusive)] per word).

    cover=True partitions the whole window (the paper's setting: the window is the keyword's span);
    cover=False lets leading and trailing frames stay unassigned (a keyword inside a longer window).
    voiced: optional (T,) bool; segment means use only these frames (pauses carry no word), each
    segment must hold one, and each word's span is trimmed to its first..last voiced frame.
    """
    T, W = audio.shape[0], words.shape[0]
    if W == 0 or T < W * min_seg:
        return -1.0, []
    L = max_seg or T
    wv = words / (np.linalg.norm(words, axis=1, keepdims=True) + 1e-8)
    v = np.ones(T) if voiced is None else np.asarray(voiced, float)
    if v.sum() < W:
        return -1.0, []
    csum = np.concatenate([np.zeros((1, audio.shape[1])), np.cumsum(audio * v[:, None], axis=0)])  # (T+1, D)
    ccount = np.concatenate([[0.0], np.cumsum(v)])  # voiced frames before each index
    neg = -1e9
    # best[w, e]: best total for words 0..w-1 with word w-1 ending at frame e (exclusive)
    best = np.full((W + 1, T + 1), neg)
    back = np.zeros((W + 1, T + 1), np.int64)
    if cover:
        best[0, 0] = 0.0  # the first word starts at frame 0
    else:
        best[0, :] = 0.0  # the first word may start anywhere
    for w in range(1, W + 1):
        for e in range(w * min_seg, T + 1):
            s_lo, s_hi = max(0, e - L), e - min_seg
            if s_hi < s_lo:
                continue
            starts = np.arange(s_lo, s_hi + 1)
            count = ccount[e] - ccount[starts]
            seg = (csum[e] - csum[starts]) / np.maximum(count, 1)[:, None]  # (S, D) segment means
            seg /= np.linalg.norm(seg, axis=1, keepdims=True) + 1e-8
            tot = best[w - 1, starts] + np.where(count > 0, seg @ wv[w - 1], neg)
            k = int(np.argmax(tot))
            best[w, e], back[w, e] = tot[k], starts[k]
    e = T if cover else int(np.argmax(best[W]))
    if best[W, e] <= neg / 2:
        return -1.0, []  # no partition within max_seg
    total = float(best[W, e])
    segs = []
    for w in range(W, 0, -1):
        s = int(back[w, e])
        idx = np.flatnonzero(v[s:e] > 0)  # trim to the voiced part: a word ends where its sound ends
        segs.append((s + int(idx[0]), s + int(idx[-1]) + 1) if voiced is not None and idx.size else (s, e))
        e = s
    return total / W, segs[::-1]
