"""Peer keyword spotters on the developers' real-keyword check, graded exactly as heron is.

Runs in its own venv (scripts/peers/run.sh makes it; nothing here imports heron):
  Porcupine 1.9.5   built-in keyword files (snowboy, view glass only: per-word models by Picovoice).
                    Score = 1 - the lowest sensitivity at which the file triggers (bisection, 1/128).
  PocketSphinx 5.1  keyphrase search, enrolled from text (CMU dictionary; snowboy and chatterbox
                    added by hand), permissive threshold 1e-40; score = best detection's probability.
  EfficientWord-Net 1.0.5  ResNet-50 ArcFace embeddings; references synthesized from text with
                    espeak-ng (8 voice/speed variants); score = best cosine score over 1.5 s windows
                    (hop 0.25 s).
The pool, the positives/negatives rule and the metrics (AUC, EER, FRR at 1 and 0.5 FA/h) are the check's
own functions (../shared/tools/eval_real_keywords.py), imported, not copied.

Usage: PEERS_PY scripts/peers/peers.py [--engines porcupine,pocketsphinx,efficientword] [--json OUT]
                                       [--keywords snowboy,athena] [--limit N]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT.parent / "shared" / "tools" / "eval_real_keywords.py"
RATE = 16000
EXTRA_PRONUNCIATIONS = {"snowboy": "S N OW B OY", "chatterbox": "CH AE T ER B AA K S"}
PORCUPINE_KEYWORDS = {"snowboy": "snowboy", "view glass": "view glass"}


def load_check():
    spec = importlib.util.spec_from_file_location("eval_real_keywords", CHECK)
    if spec is None or not CHECK.exists():
        raise SystemExit(f"the check is not at {CHECK}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read16k(path: str) -> np.ndarray:
    """int16 mono at 16 kHz (linear interpolation for other rates, as EfficientWord-Net's own tools do)."""
    a, sr = sf.read(path, dtype="float32", always_2d=True)
    a = a.mean(1)
    if sr != RATE:
        n = int(len(a) * RATE / sr)
        a = np.interp(np.arange(n) / RATE, np.arange(len(a)) / sr, a).astype(np.float32)
    return (np.clip(a, -1, 1) * 32767).astype(np.int16)


# --- Porcupine ------------------------------------------------------------------------------------
class Porcupine:
    name = "Porcupine 1.9.5 (built-in keyword files)"

    def __init__(self):
        import pvporcupine

        self.pv = pvporcupine
        self.handles = {}

    def supports(self, text):
        return text in PORCUPINE_KEYWORDS

    def _fires(self, text, audio, s):
        key = (text, s)
        if key not in self.handles:
            self.handles[key] = self.pv.create(keywords=[PORCUPINE_KEYWORDS[text]], sensitivities=[s])
        h = self.handles[key]
        n = h.frame_length
        pad = np.concatenate([audio, np.zeros(RATE // 2, np.int16)])  # let a word at the very end finish
        return any(h.process(pad[i:i + n].tolist()) >= 0 for i in range(0, len(pad) - n + 1, n))

    def score(self, text, audio, path):
        if not self._fires(text, audio, 1.0):
            return 0.0
        lo, hi = 0.0, 1.0  # fires at hi, not (known) at lo
        for _ in range(7):
            mid = round((lo + hi) / 2, 6)
            if self._fires(text, audio, mid):
                hi = mid
            else:
                lo = mid
        return 1.0 - hi


# --- PocketSphinx -----------------------------------------------------------------------------------
class PocketSphinx:
    name = "PocketSphinx 5.1.1 keyphrase search (text)"

    def __init__(self):
        import pocketsphinx

        self.ps = pocketsphinx
        model = Path(pocketsphinx.get_model_path()) / "en-us"
        self.hmm = str(model / "en-us")
        self.dict = tempfile.NamedTemporaryFile("w", suffix=".dict", delete=False)
        self.dict.write((model / "cmudict-en-us.dict").read_text())
        self.dict.write("".join(f"{w} {p}\n" for w, p in EXTRA_PRONUNCIATIONS.items()))
        self.dict.close()
        self.decoders = {}

    def supports(self, text):
        return True

    def score(self, text, audio, path):
        if text not in self.decoders:
            self.decoders[text] = self.ps.Decoder(hmm=self.hmm, dict=self.dict.name, keyphrase=text,
                                                  kws_threshold=1e-40, loglevel="FATAL")
        d = self.decoders[text]
        d.start_utt()
        d.process_raw(audio.tobytes(), full_utt=True)
        d.end_utt()
        return max((float(s.prob) for s in (d.seg() or [])), default=0.0)


# --- EfficientWord-Net ------------------------------------------------------------------------------
class EfficientWord:
    name = "EfficientWord-Net 1.0.5 (espeak-ng references)"
    VOICES = [("en-us", 160), ("en-us", 130), ("en", 160), ("en+f3", 150), ("en+m3", 150), ("en-us+f4", 170),
              ("en-gb-x-rp", 150), ("en-us+m7", 140)]

    def __init__(self):
        from eff_word_net.audio_processing import Resnet50_Arc_loss

        self.model = Resnet50_Arc_loss()
        self.refs = {}
        self.windows = {}  # file -> (n_windows, dim) embeddings: shared by every keyword

    def supports(self, text):
        return True

    def _references(self, text):
        if text not in self.refs:
            embs = []
            with tempfile.TemporaryDirectory() as tmp:
                for i, (voice, speed) in enumerate(self.VOICES):
                    wav = Path(tmp) / f"{i}.wav"
                    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True,
                                   capture_output=True)
                    a = read16k(str(wav)).astype(np.float32) / 32767
                    embs.append(self.model.audioToVector(self.model.fixPaddingIssues(a)))
            self.refs[text] = np.squeeze(np.array(embs))
        return self.refs[text]

    def _embed(self, path, audio):
        if path not in self.windows:
            w = self.model.window_frames
            x = audio.astype(np.float32) / 32767
            if len(x) < w:
                x = np.concatenate([x, np.zeros(w - len(x), np.float32)])
            starts = list(range(0, len(x) - w + 1, RATE // 4)) or [0]
            if starts[-1] != len(x) - w:
                starts.append(len(x) - w)
            self.windows[path] = np.concatenate([self.model.audioToVector(x[s:s + w]) for s in starts])
        return self.windows[path]

    def score(self, text, audio, path):
        return float(self.model.scoreVector(self._embed(path, audio), self._references(text)))


ENGINES = {"porcupine": Porcupine, "pocketsphinx": PocketSphinx, "efficientword": EfficientWord}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--keywords", default=None, help="comma-separated keys of the check (default: all five)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--limit", type=int, default=0, help="score only N files spread over the pool (a quick try; not a result)")
    args = ap.parse_args()
    check = load_check()
    keywords = check.KEYWORDS if not args.keywords else {k: check.KEYWORDS[k] for k in args.keywords.split(",")}
    rows = check.load_pool()
    if args.limit:  # every k-th file, so that a quick try still has positives and negatives
        rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
    audio = {r["path"]: read16k(r["path"]) for r in rows}
    results = {}
    for name in args.engines.split(","):
        if name not in ENGINES:
            raise SystemExit(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
        eng = ENGINES[name]()
        t0, res = time.time(), {}
        for kw, text in keywords.items():
            if not eng.supports(text):
                continue
            pos, neg, neg_s = [], [], 0.0
            for r in rows:
                a = audio[r["path"]]
                s = eng.score(text, a, r["path"])
                if r["transcript"] == text:
                    pos.append(s)
                elif not check.contains(r["transcript"], text):
                    neg.append(s)
                    neg_s += r["duration_s"]
            if not pos or not neg:
                continue
            auc, eer = check.auc_eer(pos, neg)
            h = neg_s / 3600
            res[kw] = {"auc": round(auc, 2), "eer": round(eer, 2),
                       "frr_at_1fah": round(check.frr_at_fah(pos, neg, h, 1.0), 1),
                       "frr_at_05fah": round(check.frr_at_fah(pos, neg, h, 0.5), 1), "n_pos": len(pos), "n_neg": len(neg)}
            v = res[kw]
            print(f"{name:13s} {kw:15s} AUC {v['auc']:6.2f}  EER {v['eer']:5.2f}  FRR@1FA/h {v['frr_at_1fah']:5.1f}%",
                  flush=True)
        mean = {k: round(float(np.mean([v[k] for v in res.values()])), 2) for k in ("auc", "eer", "frr_at_1fah")} \
            if res else {}
        results[name] = {"engine": eng.name, "per_keyword": res, "mean": mean, "seconds": round(time.time() - t0, 1)}
        print(f"{name:13s} mean over {len(res)} keywords: {mean}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
