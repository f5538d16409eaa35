"""Score calibration: one threshold for every keyword.

The matcher's raw output is z = (keyword path log-likelihood ratio) / N, N = phonemes. A logistic
model p = sigmoid(a*z + b + c*N) is fitted on LibriPhrase-style pairs (positives vs easy and hard
negatives) spoken by held-out TTS voices, with a seed different from evaluation's. The length term
lets short keywords (which match random speech more easily) need a better z than long ones.
"""
from __future__ import annotations

import numpy as np

from heron.runtime.ctc_kws import CTCKeywordMatcher
from heron.runtime.phonemes import pronounce
from heron.runtime.spotter import KeywordSpotter

from .eval_kws import heldout_pair_clips


def raw_features(spotter: KeywordSpotter, n_anchors: int = 200, seed: int = 99):
    """-> (z, N, verifier probability or NaN, label) arrays over calibration pairs, at the first
    stage's best frame."""
    z, n, v, y = [], [], [], []
    for p, a in heldout_pair_clips(n_anchors, seed, "calibration"):
        lp, emb, _ = spotter.encode(a)
        try:
            classes = [i + 1 for i in pronounce(p.anchor).ids()]
        except ValueError:
            continue
        m = CTCKeywordMatcher(classes, **spotter.matcher_options)
        raw, starts, _ = m.step(lp, m.init_state())
        i = int(np.argmax(raw))
        z.append(float(np.log(max(raw[i], 1e-30))))
        n.append(m.n)
        if spotter.verifier_session is not None:
            from heron.runtime.spotter import Keyword

            te = spotter.text_session.run(None, {"phoneme_ids": np.asarray([classes], np.int64)})[0][0]
            kw = Keyword("_", None, 0.5, m, te)  # type: ignore[arg-type]
            v.append(spotter.verify(kw, emb[max(0, int(starts[i]) - spotter.verifier_margin): i + 1]))
        else:
            v.append(np.nan)
        y.append(p.label)
    return np.asarray(z), np.asarray(n, float), np.asarray(v, float), np.asarray(y, float)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Newton's method for L2-regularized logistic regression; X includes a bias column."""
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        g = X.T @ (p - y) + l2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(H, g)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def fit_calibration(spotter: KeywordSpotter, n_anchors: int = 200, seed: int = 99) -> dict:
    """Logistic fusion coefficients (and, with a verifier, the first-stage floor below which the
    verifier is not consulted: it keeps 99.5% of the calibration positives)."""
    z, n, v, y = raw_features(spotter, n_anchors, seed)
    z = np.maximum(z, -50.0)
    cols = [z, n]
    if not np.isnan(v).any():
        p = np.clip(v, 1e-6, 1 - 1e-6)
        cols.append(np.log(p / (1 - p)))
    w = fit_logistic(np.stack(cols + [np.ones_like(z)], axis=1), y)
    cal = {"slope": float(w[0]), "per_phoneme": float(w[1]), "offset": float(w[-1]), "threshold": 0.5,
           "fitted_on": f"{len(y)} held-out-voice TTS pairs (seed {seed})"}
    if len(cols) == 3:
        if w[2] <= 0:  # a verifier that does not help is switched off rather than inverted
            w = np.concatenate([fit_logistic(np.stack([z, n, np.ones_like(z)], axis=1), y)[:2], [0.0],
                                fit_logistic(np.stack([z, n, np.ones_like(z)], axis=1), y)[2:]])
        cal["slope"], cal["per_phoneme"], cal["offset"] = float(w[0]), float(w[1]), float(w[-1])
        cal["verifier"] = float(w[2])
        cal["min_first_stage"] = float(np.exp(np.quantile(z[y == 1], 0.005)))
    return cal
