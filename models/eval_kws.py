"""Keyword-spotting evaluation on the runtime (what ships is what is measured).

Sets:
- `tts`: LibriPhrase-style pairs spoken by TTS voices held out of training (positive / easy / hard),
  with silence padding and light noise; AUC and EER for easy and hard negatives.
- `real`: keyword-in-utterance pairs on ../shared/data/real_speech sentences and words. Positives:
  1-4 word phrases of the utterance's transcript; hard negatives: the vocabulary phrase with the
  smallest non-zero phoneme distance to such a phrase whose phonemes do not occur in the utterance.
- `stream`: a labelled stream of held-out voices over background speech and the real noise clips;
  FRR at 0.5 and 1 false accepts per hour.
The real wake words are graded by ../shared/tools/eval_real_wakewords.py through `heron kws score`.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from heron.runtime import metrics
from heron.runtime.phonemes import levenshtein, pronounce
from heron.runtime.spotter import KeywordSpotter

from heron.models.data.augment import NoiseBank
from heron.models.data.pairs import heldout_pair_clips
from heron.models.data.tts import VoiceRegistry
from heron.models.data.vocab import vocabulary

REAL_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_speech"


def _auc_eer(pos, neg) -> dict:
    e, _ = metrics.eer(pos, neg)
    return {"auc": round(100 * metrics.auc(pos, neg), 2), "eer": round(100 * e, 2), "n_pos": len(pos),
            "n_neg": len(neg)}


def eval_tts_pairs(spotter: KeywordSpotter, n_anchors: int = 300, seed: int = 1234) -> dict:
    scores: dict[str, list[float]] = {"positive": [], "easy": [], "hard": []}
    for p, a in heldout_pair_clips(n_anchors, seed, "eval tts"):
        lp, emb, _ = spotter.encode(a)
        try:
            s, _, _ = spotter.match_encoded(p.anchor, lp, emb)
        except ValueError:
            continue
        scores[p.kind].append(s)
    return {"easy": _auc_eer(scores["positive"], scores["easy"]),
            "hard": _auc_eer(scores["positive"], scores["hard"]), "anchors": n_anchors,
            "voices": "held-out TTS voices (15% of engine voices, by hash)"}


def _load_real_rows(root: Path) -> list[dict]:
    with open(root / "manifest.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _contains(seq: tuple, sub: tuple) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def eval_real_pairs(spotter: KeywordSpotter, root: Path = REAL_SPEECH, seed: int = 0, per_utt: int = 3) -> dict:
    """Keyword-in-utterance pairs on real sentences and words (not the wake-word recordings)."""
    import soundfile as sf

    if not (root / "manifest.tsv").exists():
        return {"skipped": f"no real speech at {root}"}
    rng = np.random.default_rng(seed)
    vocab = [p for p in vocabulary() if len(p.phonemes) >= 4]
    by_len: dict[int, list] = {}
    for p in vocab:
        by_len.setdefault(len(p.phonemes), []).append(p)
    pos, neg = [], []
    rows = [r for r in _load_real_rows(root) if r["transcript"] and not r["file"].startswith("keywords/")]
    for r in rows:
        audio, sr = sf.read(str(root / r["file"]), dtype="float32")
        audio = np.concatenate([np.zeros(4000, np.float32), audio, np.zeros(4000, np.float32)])  # FSDD is tight
        lp, emb, _ = spotter.encode(audio)
        words = r["transcript"].split()
        utt_ph = pronounce(r["transcript"], max_words=None, max_phonemes=None).phonemes
        spans = [(i, n) for n in range(1, 5) for i in range(len(words) - n + 1)]
        rng.shuffle(spans)
        used = 0
        for i, n in spans:
            text = " ".join(words[i:i + n])
            try:
                ph = pronounce(text).phonemes
            except ValueError:
                continue
            if len(ph) < 4:
                continue  # too short to be a keyword (and to find a hard negative for)
            # hard negative: nearest vocabulary phrase (similar length) not present in the utterance
            best, best_d = None, 99
            for L in range(len(ph) - 2, len(ph) + 3):
                for cand in by_len.get(L, []):
                    if abs(len(cand.phonemes) - len(ph)) >= best_d:
                        continue
                    d = levenshtein(ph, cand.phonemes)
                    if 0 < d < best_d and not _contains(utt_ph, cand.phonemes):
                        best, best_d = cand, d
            if best is None:
                continue
            pos.append(spotter.match_encoded(text, lp, emb)[0])
            neg.append(spotter.match_encoded(best.text, lp, emb)[0])
            used += 1
            if used >= per_utt:
                break
    return {"hard": _auc_eer(pos, neg), "utterances": len(rows),
            "note": "positives: phrases of the transcript; negatives: nearest vocabulary phrase not in the utterance"}


def eval_stream(spotter: KeywordSpotter, minutes: float = 10.0, keyword: str = "hey heron", seed: int = 7,
                workdir: Path | None = None, noise_dir: Path | None = None) -> dict:
    import soundfile as sf

    from heron.models.data.streams import StreamConfig, build_stream, read_labels
    from heron.models.data.vocab import corpus_sentences

    if workdir is None:  # a generated stream is a cache (heron's cache folder), never the current folder
        from heron.models.data.tts import cache_dir

        workdir = cache_dir().parent / "eval_stream"
    tag = f"{keyword.replace(' ', '_')}_{minutes:g}min_seed{seed}"
    wav, lab = workdir / f"stream_{tag}.wav", workdir / f"labels_{tag}.csv"
    if not wav.exists():
        sentences = [s for s in corpus_sentences() if 3 <= len(s.split()) <= 20][:20000]
        noise_dir = noise_dir or (REAL_SPEECH / "noise")
        build_stream(StreamConfig(minutes=minutes, keywords=(keyword,), seed=seed), wav, lab, sentences,
                     VoiceRegistry(), NoiseBank(noise_dir if noise_dir.is_dir() else None))
    audio, _ = sf.read(str(wav), dtype="float32")
    labels = [(x.start_s, x.end_s) for x in read_labels(lab)]
    sp_kw = spotter.enroll(keyword, name="__eval__")
    st = spotter.stream()
    st.record_scores = True  # the stream's own per-frame confidences
    try:
        st.accept(audio)
        st.flush()
    finally:
        spotter.unenroll(sp_kw.name)
    conf = np.concatenate(st.score_log[sp_kw.name])
    # a live stream emits a detection when the chunk holding the frame is complete: time it then
    fpc = spotter.bundle.manifest.frames_per_chunk
    times = (np.arange(len(conf)) // fpc + 1) * fpc * spotter.frame_seconds
    curve = metrics.det_curve(times, conf, labels, len(audio) / spotter.sample_rate,
                              thresholds=np.unique(np.quantile(conf, np.linspace(0.9, 1.0, 400))))
    out = {"minutes": minutes, "keywords": len(labels)}
    for fah in (0.1, 0.5, 1.0):
        try:
            r = metrics.frr_at_fa_per_hour(curve, fah)
            out[f"frr_at_{fah}fah"] = round(100 * r.frr, 1)
            out[f"threshold_at_{fah}fah"] = round(r.threshold, 5)
            if r.latencies_s:
                # latency = time the event is emitted (end of its chunk) - keyword end (from the labels)
                out[f"latency_s_at_{fah}fah"] = {"median": round(float(np.median(r.latencies_s)), 3),
                                                 "p95": round(float(np.percentile(r.latencies_s, 95)), 3)}
        except ValueError:
            out[f"frr_at_{fah}fah"] = None
    out["_curve"] = curve
    return out


def run_eval(bundle: str | None, sets: list[str], out_json: str | None = None, int8: bool = False,
             anchors: int = 300, stream_minutes: float = 10.0) -> dict:
    spotter = KeywordSpotter.load(bundle, int8=int8)
    res: dict = {"bundle": str(spotter.bundle.root), "int8": spotter.int8, "date": time.strftime("%Y-%m-%d")}
    if "tts" in sets:
        res["tts_heldout"] = eval_tts_pairs(spotter, n_anchors=anchors)
    if "real" in sets:
        res["real_pairs"] = eval_real_pairs(spotter)
    if "negatives" in sets:  # the default threshold on real non-keyword audio, over 30 other phrases
        import glob

        from heron.models.calibrate_kws import real_negative_threshold

        files = sorted(f for d in ("sentences", "words", "noise") for f in glob.glob(str(REAL_SPEECH / d / "*.wav")))
        res["real_negatives"] = real_negative_threshold(spotter, files, 0.5) if files else {"skipped": "no real speech"}
    if "stream" in sets:
        st = eval_stream(spotter, minutes=stream_minutes)
        curve = st.pop("_curve")
        res["stream"] = st
        if out_json:  # the plot goes beside the report the user asked for, nowhere else
            from heron.models.plots import plot_det

            png = Path(out_json).with_suffix(".det.png")
            try:
                Path(out_json).parent.mkdir(parents=True, exist_ok=True)
                plot_det({"hey heron": curve}, str(png), "held-out voices stream")
                res["stream"]["det_png"] = str(png)
            except ImportError:
                pass
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(res, indent=1))
    return res
