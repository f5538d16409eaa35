"""Keyword-spotting metrics (numpy only): AUC, EER, FRR at false accepts per hour, latency, DET plot.

Pair metrics take scores of positives and negatives. Stream metrics take a score track (one score
per frame, with the frame times) and the labelled keyword intervals: a detection is an upward
crossing of the threshold, and after a detection the detector stays quiet for `refractory_s`
(as a deployed spotter does). A detection inside a labelled interval (plus `tolerance_s` after its
end) is a true accept, once per label; every other detection is a false accept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def auc(pos, neg) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(equal), from average ranks."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    # average rank of each distinct value (1-based), shared by its ties
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inv]
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def eer(pos, neg) -> tuple[float, float]:
    """Equal error rate: (mean of FPR and FNR where they cross, threshold there).

    A score >= threshold is an accept. Candidate thresholds are every observed score.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("EER needs at least one positive and one negative score")
    ths = np.unique(np.concatenate([pos, neg, [np.inf]]))
    ps, ns = np.sort(pos), np.sort(neg)
    fnr = np.searchsorted(ps, ths, side="left") / pos.size  # positives below threshold
    fpr = 1.0 - np.searchsorted(ns, ths, side="left") / neg.size  # negatives at or above
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fnr[i] + fpr[i]) / 2.0), float(ths[i])


def detections(times: np.ndarray, scores: np.ndarray, threshold: float, refractory_s: float) -> np.ndarray:
    """Times of upward threshold crossings, at most one per refractory period."""
    above = np.asarray(scores) >= threshold
    rising = np.flatnonzero(above & ~np.concatenate([[False], above[:-1]]))
    out: list[float] = []
    last = -np.inf
    for i in rising:
        t = float(times[i])
        if t - last >= refractory_s:
            out.append(t)
            last = t
    return np.asarray(out)


@dataclass(frozen=True)
class StreamResult:
    threshold: float
    true_accepts: int
    false_accepts: int
    n_keywords: int
    hours: float
    latencies_s: tuple[float, ...]  # detection time - keyword end, one per true accept

    @property
    def frr(self) -> float:
        return 1.0 - self.true_accepts / self.n_keywords if self.n_keywords else 0.0

    @property
    def fa_per_hour(self) -> float:
        return self.false_accepts / self.hours if self.hours > 0 else 0.0


def score_stream(times, scores, labels: list[tuple[float, float]], duration_s: float, threshold: float,
                 refractory_s: float = 1.0, tolerance_s: float = 1.0) -> StreamResult:
    """Count true/false accepts of one threshold over one stream.

    labels: (start_s, end_s) of each keyword occurrence. A detection in [start, end + tolerance_s]
    of a not-yet-detected label is a true accept.
    """
    det = detections(np.asarray(times), np.asarray(scores), threshold, refractory_s)
    spans = sorted(labels)
    hit = [False] * len(spans)
    fa, lat = 0, []
    for t in det:
        for j, (a, b) in enumerate(spans):
            if a <= t <= b + tolerance_s:
                if not hit[j]:
                    hit[j] = True
                    lat.append(t - b)
                break  # a second detection of the same keyword is neither a hit nor a false accept
        else:
            fa += 1
    return StreamResult(threshold, sum(hit), fa, len(spans), duration_s / 3600.0, tuple(lat))


def det_curve(times, scores, labels, duration_s: float, thresholds=None, refractory_s: float = 1.0,
              tolerance_s: float = 1.0) -> list[StreamResult]:
    """StreamResult for each threshold (default: 200 quantiles of the score track)."""
    scores = np.asarray(scores)
    if thresholds is None:
        thresholds = np.unique(np.quantile(scores, np.linspace(0.5, 1.0, 200)))
    return [score_stream(times, scores, labels, duration_s, float(t), refractory_s, tolerance_s) for t in thresholds]


def frr_at_fa_per_hour(curve: list[StreamResult], target_fah: float) -> StreamResult:
    """The operating point with the lowest FRR whose FA/h does not exceed the target."""
    ok = [r for r in curve if r.fa_per_hour <= target_fah]
    if not ok:
        raise ValueError(f"no threshold reaches {target_fah} FA/h; extend the threshold range")
    return min(ok, key=lambda r: (r.frr, -r.threshold))


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what decides int8/fp32 kernel speed


def machine() -> str:
    """The CPU a benchmark ran on: model, the ISA flags that matter (AVX2 / AVX-512 / VNNI), cores.
    Figures differ several-fold between CPUs of one cloud 'kind', so every benchmark prints this."""
    import os

    from heron.runtime.cpu import cpu_info

    cpu, flags = cpu_info()
    isa = [f for f in ISA_FLAGS if f in flags] or (["neon"] if "asimd" in flags else ["isa unknown"])
    if flags and "avx512_vnni" not in flags and "avx_vnni" not in flags and "avx2" in flags:
        isa.append("no VNNI")
    return f"{cpu} ({', '.join(isa)}), {os.cpu_count()} cores"

