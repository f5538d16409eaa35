"""A/B of the always-on cost of KWS bundles in one process, interleaved: CPU seconds per audio second
(RTF) on the cost probe's audio (60 s of speechocean762 `test/` speech and 60 s of brown noise, as
../shared/tools/kws_cost_probe.py makes them), 100 ms blocks, one keyword. Each bundle runs each
signal `--repeats` times in turn; the medians (and minimums) are printed as JSON lines, so that a busy
or throttled machine moves every bundle alike. Run on one core:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/bench_kws_cost_ab.py runtime/assets/kws runs/other-bundle
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def probe_audio(data: Path) -> tuple[np.ndarray, np.ndarray]:
    import soundfile as sf

    rows = [r for r in csv.DictReader(open(data / "speechocean762" / "manifest.tsv"), delimiter="\t") if r["split"] == "test"]
    speech = np.concatenate([sf.read(data / "speechocean762" / r["file"], dtype="float32")[0] for r in rows[:40]])[:16000 * 60]
    rng = np.random.default_rng(0)
    noise = (np.cumsum(rng.standard_normal(16000 * 60)) * 0.002).astype(np.float32)
    noise = (noise - np.convolve(noise, np.ones(400) / 400, mode="same")).astype(np.float32)
    return speech, (0.05 * noise / (np.abs(noise).max() + 1e-9)).astype(np.float32)


def rtf(spotter, x: np.ndarray) -> float:
    st = spotter.stream()
    c0 = time.process_time()
    for i in range(0, len(x), 1600):
        st.accept(x[i:i + 1600])
    return (time.process_time() - c0) / (len(x) / 16000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keyword", default="computer")
    a = ap.parse_args()
    from heron import KeywordSpotter
    from heron.runtime.metrics import machine

    speech, noise = probe_audio(Path(os.environ.get("HERON_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    spotters = {}
    for b in a.bundles:
        spotters[b] = KeywordSpotter.load(b)
        spotters[b].enroll(a.keyword)
        rtf(spotters[b], speech[:16000 * 5])  # warm-up
    res = {b: {"speech": [], "noise": []} for b in a.bundles}
    for _ in range(a.repeats):
        for b, sp in spotters.items():
            res[b]["speech"].append(rtf(sp, speech))
            res[b]["noise"].append(rtf(sp, noise))
    for b, r in res.items():
        s, n = float(np.median(r["speech"])), float(np.median(r["noise"]))
        print(json.dumps({"bundle": b, "rtf_speech_median": round(s, 5), "rtf_speech_min": round(min(r["speech"]), 5),
                          "rtf_noise_median": round(n, 5), "rtf_noise_min": round(min(r["noise"]), 5),
                          "noise_over_speech": round(n / s, 3), "repeats": a.repeats, "machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
