"""Score calibration: one threshold for every keyword.

The matcher's raw output is z = (keyword path log-likelihood ratio) / N, N = phonemes. A logistic
model p = sigmoid(a*z + b + c*N) is fitted on LibriPhrase-style pairs (positives vs easy and hard
negatives) spoken by held-out TTS voices, with a seed different from evaluation's. The length term
lets short keywords (which match random speech more easily) need a better z than long ones.
"""
from __future__ import annotations

import numpy as np

from heron.runtime.phonemes import pronounce
from heron.runtime.spotter import KeywordSpotter

from heron.models.data.pairs import heldout_pair_clips


def raw_features(spotter: KeywordSpotter, n_anchors: int = 200, seed: int = 99):
    """-> (z as _calibrate sees it (Z-normed when the bundle has a background bank), N, verifier
    probability or NaN, label, raw log score) arrays over calibration pairs, at the first stage's best frame."""
    z, n, v, y, zraw = [], [], [], [], []
    for p, a in heldout_pair_clips(n_anchors, seed, "calibration"):
        lp, emb, _ = spotter.encode(a)
        try:
            classes = [i + 1 for i in pronounce(p.anchor).ids()]
        except ValueError:
            continue
        kw = spotter.make_keyword(classes)
        m = kw.matcher
        raw, starts, _ = m.step(lp, m.init_state())
        i = int(np.argmax(raw))
        zi = float(np.log(max(raw[i], 1e-30)))
        zraw.append(zi)
        z.append((zi - kw.norm[0]) / kw.norm[1] if kw.norm else zi)  # as _calibrate sees it
        n.append(m.n)
        if spotter.verifier_session is not None:
            v.append(spotter.verify(kw, emb[max(0, int(starts[i]) - spotter.verifier_margin): i + 1]))
        else:
            v.append(np.nan)
        y.append(p.label)
    return np.asarray(z), np.asarray(n, float), np.asarray(v, float), np.asarray(y, float), np.asarray(zraw)


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
    z, n, v, y, zraw = raw_features(spotter, n_anchors, seed)
    z = np.maximum(z, -200.0)
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
        # a floor on the raw first-stage score (what the runtime compares), not the normalized one
        cal["min_first_stage"] = float(np.exp(np.quantile(zraw[y == 1], 0.005)))
    return cal


# Wake phrases used only to set the default threshold on real non-keyword audio (none of them is
# a graded wake word).
CALIBRATION_PHRASES = (
    "hey computer", "okay robot", "hello device", "lights on", "lights off", "wake up", "hey assistant",
    "start recording", "stop music", "next song", "volume up", "volume down", "call home", "open the door",
    "hey jarvis", "good morning", "what time is it", "turn on the radio", "hey buddy", "play music",
    "cancel that", "take a picture", "go back", "hey heron", "okay listen", "show me the map",
    "set a timer", "answer the phone", "help me", "hey there",
)


def real_negative_threshold(spotter: KeywordSpotter, negative_files: list[str], fa_per_hour: float = 0.5,
                            phrases=CALIBRATION_PHRASES) -> dict:
    """The lowest threshold at which the phrases, summed over all negative files, false-accept at most
    `fa_per_hour` per keyword-hour (each file counts at most one false accept per phrase)."""
    import soundfile as sf

    encoded, hours = [], 0.0
    if spotter.head is not None:  # the head needs the audio: every phrase streamed over each file at once
        kws = [spotter.make_keyword(spotter.classes(pronounce(t)), name=t) for t in phrases]
    cols = []
    for f in negative_files:
        a, sr = sf.read(f, dtype="float32")
        if sr != spotter.sample_rate or a.ndim != 1:
            continue
        hours += len(a) / sr / 3600
        padded = np.concatenate([np.zeros(4000, np.float32), a, np.zeros(4000, np.float32)])
        if spotter.head is None:
            encoded.append(spotter.encode(padded))
            continue
        st = spotter.stream(kws)
        st.track_best = True
        st.accept(padded)
        st.flush()
        cols.append([st.best[t][0] for t in phrases])
    if spotter.head is None:
        per_phrase = np.array([[spotter.match_encoded(text, lp, emb)[0] for lp, emb, _ in encoded] for text in phrases])
    else:
        per_phrase = np.array(cols).T  # (phrases, files)
    maxima = np.sort(per_phrase.ravel())[::-1]
    allowed = int(np.floor(fa_per_hour * hours * len(phrases)))
    thr = float(maxima[allowed]) if allowed < len(maxima) else 0.0
    worst = per_phrase.max(axis=1)  # each phrase's highest score on non-keyword audio
    return {"threshold": thr, "fa_per_hour": fa_per_hour, "keyword_hours": round(hours * len(phrases), 2),
            "files": len(encoded) or len(cols), "phrases": len(phrases),
            "max_negative_score_per_phrase": {"min": round(float(worst.min()), 4),
                                              "median": round(float(np.median(worst)), 4),
                                              "max": round(float(worst.max()), 4)},
            "false_accepts_at_default_threshold": int((per_phrase >= spotter.calibration.get("threshold", 0.5)).sum())}


def build_background(spotter: KeywordSpotter, n_segments: int = 120, seconds: float = 3.2, seed: int = 4242,
                     real: list[str] | None = None) -> np.ndarray:
    """Log-probs (segments, frames, classes) of generic speech: the background bank keywords are
    normalized against at enrollment (float16). By default TTS speech (training voices, sentence
    pieces, light noise); with `real` (training data sources: TSV manifests' train rows, CSV,
    LibriSpeech folders), recorded speech drawn from them at random, so that the Z-norm statistics
    are those of real voices and rooms."""
    from heron.models.data.augment import NoiseBank, add_noise

    rng = np.random.default_rng(seed)
    if real:
        from heron.models.data.real import load_rows, read_rows

        rows = [r for src in real for r in read_rows(src)]
        pick = rng.choice(len(rows), size=min(len(rows), n_segments * 3), replace=False)
        audio = [u.audio.astype(np.float32) / 32767.0 for u in load_rows([rows[i] for i in pick])]
    else:
        from heron.models.data.tts import VoiceRegistry, synthesize_many
        from heron.models.kws_data import training_texts

        texts = training_texts(n_segments * 2, seed)
        voices = VoiceRegistry().sample(n_segments * 2, split="train", seed=seed, distinct=False)
        audio = synthesize_many(list(zip(voices, texts)), desc="background")
    n = int(seconds * spotter.sample_rate)
    noise = NoiseBank(None)
    segs = []
    pos = 0
    for _ in range(n_segments):  # pack utterances back to back into fixed-length segments
        buf = np.zeros(0, np.float32)
        while len(buf) < n:
            buf = np.concatenate([buf, audio[pos % len(audio)], np.zeros(int(rng.uniform(0.05, 0.4) * spotter.sample_rate), np.float32)])
            pos += 1
        seg = buf[:n] if real else add_noise(buf[:n], noise.sample(n, rng), float(rng.uniform(10, 30)))
        lp, _, _ = spotter.encode(seg)
        segs.append(lp)
    return np.stack(segs).astype(np.float16)
