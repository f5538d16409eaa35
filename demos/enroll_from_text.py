"""Enroll a keyword from text, then spot it in audio: a wav you give, or one synthesized here.

    python demos/enroll_from_text.py "hey heron"                 # synthesizes a test clip
    python demos/enroll_from_text.py "hey heron" --wav my.wav    # 16 kHz mono wav
Uses only the public API (heron.KeywordSpotter) for spotting.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import soundfile as sf

import heron


def synthesize_test_clip(keyword: str, out: str, seed: int = 3) -> list[tuple[float, float]]:
    """Other speech, then the keyword (a voice held out of training), then more speech, over noise."""
    from heron.synth import test_clip

    audio, sr, span = test_clip(keyword, seed=seed)
    sf.write(out, audio, sr, subtype="PCM_16")
    return [span]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("keyword", nargs="?", default="hey heron", help="keyword text")
    ap.add_argument("--wav", default=None, help="16 kHz mono wav to search (default: synthesize one)")
    ap.add_argument("--out", default="out/demo_clip.wav", help="where a synthesized clip is written")
    ap.add_argument("--sensitivity", type=float, default=0.5, help="0 (strict) .. 1 (loose)")
    args = ap.parse_args(argv)

    spotter = heron.KeywordSpotter.load()
    t0 = time.perf_counter()
    kw = spotter.enroll(args.keyword, sensitivity=args.sensitivity)
    print(f"enrolled {kw.name!r}: {' '.join(kw.pronunciation.with_boundaries())} "
          f"({(time.perf_counter() - t0) * 1000:.0f} ms incl. loading the dictionary once, "
          f"threshold {kw.threshold:.2f})")
    truth = None
    path = args.wav
    if path is None:
        import os

        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        truth = synthesize_test_clip(args.keyword, args.out)
        path = args.out
        print(f"synthesized {path}: keyword spoken at {truth[0][0]:.2f}-{truth[0][1]:.2f} s (held-out voice)")
    audio, sr = sf.read(path, dtype="int16")
    stream = spotter.stream(sample_rate=sr)
    hop = sr // 10  # feed 100 ms at a time, as a microphone would
    found = []

    def show(dets):
        for det in dets:
            found.append(det)
            words = ", ".join(f"{w.word} {w.start_s:.2f}-{w.end_s:.2f}" for w in det.words)
            print(f"  detected {det.keyword!r} at {det.start_s:.2f}-{det.end_s:.2f} s (score {det.score:.2f})"
                  + (f"  words: {words}" if words else ""))
    for i in range(0, len(audio), hop):
        show(stream.accept(audio[i:i + hop]))
    show(stream.flush())  # a detection is reported at its peak: the last one may come with the end
    best = spotter.score_file(audio.astype(np.float32) / 32768.0, kw.name) if sr == 16000 else None
    if best:
        print(f"best score over the file: {best[0]:.3f} at {best[1]:.2f}-{best[2]:.2f} s")
    if not found:
        print("  no detection above the threshold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
