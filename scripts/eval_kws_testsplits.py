"""Keyword spotting on the training corpora's `test/` splits: a model-selection figure that is not the check.

    .venv/bin/python scripts/eval_kws_testsplits.py [--bundle DIR] [--phrases 150] [--json OUT]

../shared/data/README.md asks to choose models on `test/` splits and TTS rather than on the check's
keywords. This script turns the `test/` splits of AN4, speechocean762 and speech_commands (0.67 h, 664
utterances, speakers never trained on) into a keyword-spotting test: phrases of 1-3 words and 6-14
phonemes, drawn with a fixed seed from their transcripts, are enrolled from text; a phrase's positives
are the utterances whose transcript holds it, its negatives all the others. Per phrase: AUC, and FRR at
the threshold of its highest and its third-highest negative (0 and 2 false accepts in 0.67 h); the means
over phrases. Encodes each utterance once (the bundle's single graph, speech gate off), then scores
every phrase on all of them at once. Needs ../shared/data ($HERON_DATA); writes only --json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

CORPORA = ("an4", "speechocean762", "speech_commands")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def holds(transcript: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(transcript[i:i + n] == phrase for i in range(len(transcript) - n + 1))


def test_rows() -> list[tuple[Path, list[str], float]] | None:
    """(audio path, transcript words, seconds) of every `test/` utterance; None (with a message) without the data."""
    data = Path(os.environ.get("HERON_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = []
    for c in CORPORA:
        manifest = data / c / "manifest.tsv"
        if not manifest.is_file():
            print(f"{manifest} is missing: this figure needs the shared corpora", file=sys.stderr)
            return None
        rows += [(data / c / r["file"], words(r["transcript"]), float(r["duration_s"]))
                 for r in csv.DictReader(open(manifest), delimiter="\t") if r["split"] == "test"]
    return rows


def read_mono(path, sample_rate: int) -> np.ndarray:
    """An audio file -> float32 mono at sample_rate."""
    from heron.runtime.audio import AudioFile

    audio = AudioFile(path)
    x = np.concatenate(list(audio.blocks()))
    x = x.astype(np.float32) / (32768.0 if x.dtype == np.int16 else 1.0)
    x = x if x.ndim == 1 else x.mean(axis=1)
    if audio.sample_rate != sample_rate:
        import soxr
        x = soxr.resample(x, audio.sample_rate, sample_rate)
    return x


def draw_phrases(rows, sp, n: int, seed: int) -> list[tuple[str, list[int]]]:
    """Every 1-3 word span of the transcripts, shuffled with the seed; the first n of 6-14 phonemes."""
    from heron.runtime.phonemes import pronounce

    spans = sorted({" ".join(t[i:i + k]) for _, t, _ in rows for k in (1, 2, 3) for i in range(len(t) - k + 1)})
    np.random.default_rng(seed).shuffle(spans)
    phrases = []
    for s in spans:
        try:
            classes = sp.classes(pronounce(s))
        except ValueError:
            continue
        if 6 <= len(classes) <= 14:
            phrases.append((s, classes))
        if len(phrases) == n:
            break
    return phrases


def log_prob_bank(lps: list[np.ndarray], n_classes: int, blank: int) -> np.ndarray:
    """Per-utterance (T_i, C) log-probabilities -> (B, T, C), padded with blank frames no keyword scores on."""
    T = max(max(len(x) for x in lps), 1)
    bank = np.full((len(lps), T, n_classes), -30.0, np.float32)
    bank[:, :, blank] = 0.0
    for i, x in enumerate(lps):
        bank[i, :len(x)] = x
    return bank


def phrase_scores(phrases, bank: np.ndarray, opts, blank: int) -> list[np.ndarray]:
    """Each phrase's log first-stage score on every utterance of the bank."""
    from heron.runtime.ctc_kws import CTCKeywordMatcher

    return [np.log(np.maximum(CTCKeywordMatcher(classes, opts, blank=blank).max_scores_batch(bank), 1e-30))
            for _, classes in phrases]


def figure(rows, phrases, scores) -> tuple[float, float, float]:
    """Mean over phrases of AUC and FRR at 0 and 2 false accepts (percent), from per-utterance scores."""
    aucs, frr0, frr2 = [], [], []
    for (s, _), score in zip(phrases, scores):
        label = np.array([holds(t, s.split()) for _, t, _ in rows])
        pos, neg = score[label], np.sort(score[~label])[::-1]
        aucs.append(float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))
        frr0.append(float((pos <= neg[0]).mean()))
        frr2.append(float((pos <= neg[2]).mean()))
    return round(100 * np.mean(aucs), 2), round(100 * np.mean(frr0), 1), round(100 * np.mean(frr2), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="KWS bundle (default: $HERON_BUNDLE, else the shipped one)")
    ap.add_argument("--phrases", type=int, default=150, help="keyword phrases drawn from the transcripts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--gap-penalty", type=float, default=None, help="matcher option to try (default: the bundle's)")
    ap.add_argument("--frames-per-phoneme", type=int, default=None, help="matcher option to try (default: the bundle's)")
    ap.add_argument("--posterior-weight", type=float, default=None, help="matcher option to try (default: the bundle's)")
    ap.add_argument("--confidence-quantiles", action="store_true",
                    help="also the quantiles of the positives' first-stage confidence (Z-norm and calibration as "
                         "the bundle's): where the embedding head's candidate floor (heron kws add-head "
                         "--min-confidence) leaves them")
    a = ap.parse_args()
    from heron.runtime.metrics import machine
    from heron.runtime.spotter import KeywordSpotter

    rows = test_rows()
    if rows is None:
        return 2
    sp = KeywordSpotter.load(a.bundle, speech_gate=False)
    lps = [sp.encode(read_mono(path, sp.sample_rate))[0] for path, _, _ in rows]
    phrases = draw_phrases(rows, sp, a.phrases, a.seed)
    bank = log_prob_bank(lps, sp.n_classes, sp.blank)
    from dataclasses import replace

    opts = sp.matcher_options
    if a.gap_penalty is not None:
        opts = replace(opts, gap_penalty=a.gap_penalty)
    if a.frames_per_phoneme is not None:
        opts = replace(opts, frames_per_phoneme=a.frames_per_phoneme)
    if a.posterior_weight is not None:
        opts = replace(opts, posterior_weight=a.posterior_weight)
    auc, frr0, frr2 = figure(rows, phrases, phrase_scores(phrases, bank, opts, sp.blank))
    if a.confidence_quantiles:
        from heron.runtime.spotter import _calibrate

        conf = []
        for s, classes in phrases:
            kw = sp.make_keyword(classes)
            label = np.array([holds(t, s.split()) for _, t, _ in rows])
            conf += list(_calibrate(kw.matcher.max_scores_batch(bank), kw.matcher.n, sp.calibration, norm=kw.norm)[label])
        qs = (0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.5)
        print(f"positives' first-stage confidence ({len(conf)}): " +
              ", ".join(f"{100 * q:g}% {np.quantile(conf, q):.4f}" for q in qs))
    hours = sum(d for _, _, d in rows) / 3600
    res = {"bundle": str(sp.bundle.root), "machine": machine(), "matcher": vars(opts), "utterances": len(rows), "hours": round(hours, 3),
           "phrases": len(phrases), "auc": auc, "frr_at_0fa": frr0, "frr_at_2fa": frr2}
    print(f"{res['bundle']} (matcher {vars(opts)}): {len(phrases)} phrases on {len(rows)} test utterances ({hours:.2f} h): mean AUC "
          f"{res['auc']}, FRR at 0 false accepts {res['frr_at_0fa']}%, at 2 {res['frr_at_2fa']}%")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
