"""How much the speech gate skips, and whether it ever closes inside a keyword.

Usage: .venv/bin/python scripts/speech_gate_report.py BUNDLE [--json OUT]

- Skipped share of chunks (no encoder module run) on: real read speech (speechocean762 `test/`, 60 s),
  the real noise recordings of ../shared/data/real_speech/noise (together, and each file), digital near-silence, synthetic
  music-like chords, and the cost probe's filtered brown noise.
- On every positive recording of the real-keyword check (snowboy, view glass, athena, amelia, hey
  chatterbox): chunks the gate closed where the same bundle without the gate hears a phoneme
  (non-blank posterior >= 0.5): speech the encoder would have used. Reported, not trained on.
Reads ../shared/data only; writes only --json.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _read(path: Path) -> np.ndarray:
    import soxr

    a, sr = sf.read(str(path), dtype="float32", always_2d=True)
    a = a.mean(axis=1)
    return soxr.resample(a, sr, 16000).astype(np.float32) if sr != 16000 else a


def _rows(folder: str, keep) -> list[dict]:
    m = DATA / folder / "manifest.tsv"
    if not m.is_file():
        return []
    return [r for r in csv.DictReader(open(m), delimiter="\t") if keep(r)]


def closed_share(sp, audio: np.ndarray) -> float:
    st = sp.stream([])
    st.accept(audio)
    st.flush()
    return st.chunks_without_speech / max(1, st.chunks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from heron.runtime.speech_gate import STATE_KEY
    from heron.runtime.spotter import KeywordSpotter

    gated = KeywordSpotter.load(args.bundle)
    plain = KeywordSpotter.load(args.bundle, speech_gate=False)
    if gated.speech_policy is None:
        print(f"{args.bundle} has no speech gate", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    speech = np.concatenate([_read(DATA / "speechocean762" / r["file"])
                             for r in _rows("speechocean762", lambda r: r["split"] == "test")[:40]])[: 16000 * 60]
    noise_rows = _rows("real_speech", lambda r: r["file"].startswith("noise/"))
    noise = [_read(DATA / "real_speech" / r["file"])[: 16000 * 30] for r in noise_rows]
    t = np.arange(16000 * 30) / 16000
    chords = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    brown = np.cumsum(rng.standard_normal(16000 * 30)) * 0.002
    brown = brown - np.convolve(brown, np.ones(400) / 400, mode="same")
    sets = {"speech (speechocean762 test, 60 s)": speech,
            "real noise recordings (real_speech/noise)": np.concatenate(noise) if noise else None,
            "near-silence (-70 dBFS)": (rng.standard_normal(16000 * 30) * 10 ** (-70 / 20)).astype(np.float32),
            "music-like chords": (0.1 * chords / np.abs(chords).max()).astype(np.float32),
            "cost probe's filtered brown noise": (0.05 * brown / np.abs(brown).max()).astype(np.float32)}
    report = {"bundle": args.bundle, "policy": gated.bundle.manifest.speech_gate.to_dict(), "closed_share": {}}
    for name, audio in sets.items():
        if audio is not None:
            report["closed_share"][name] = round(closed_share(gated, audio), 4)
    report["closed_share_per_noise_file"] = {Path(r["file"]).stem: round(closed_share(gated, a), 4)
                                             for r, a in zip(noise_rows, noise)}  # each its first 30 s
    # positives of the check: chunks closed where the encoder hears a phoneme
    pos = [DATA / "real_speech" / r["file"] for r in _rows("real_speech", lambda r: r["transcript"] in
                                                           ("snowboy", "view glass"))]
    pos += [DATA / "mycroft_precise" / r["file"] for r in _rows("mycroft_precise", lambda r: True)]
    heard = lost = files_lost = 0
    n = gated.chunk_samples
    for p in pos:
        a = _read(p)
        a = np.concatenate([a, np.zeros((-len(a)) % n, np.float32)])
        lp_plain, _, _ = plain.encode(a)
        st = gated.init_state()
        C = lp_plain.shape[0] // (len(a) // n)
        lost_here = 0
        for k, i in enumerate(range(0, len(a), n)):
            _, _, _, st = gated.run_chunk(a[i:i + n], st)
            hears = (1 - np.exp(lp_plain[k * C:(k + 1) * C, plain.blank])).max() >= 0.5
            heard += hears
            if hears and not st[STATE_KEY][0]:
                lost_here += 1
        lost += lost_here
        files_lost += lost_here > 0
    report["check_positives"] = {"files": len(pos), "chunks_with_phonemes": int(heard),
                                 "of_them_closed": int(lost), "files_with_a_closed_phoneme_chunk": int(files_lost)}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
