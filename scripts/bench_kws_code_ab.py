"""A/B of the spotter's runtime code: the working tree's `heron.runtime` against a git revision's, on the
same bundle (the working tree's shipped one unless --bundle), through the public API. RTF (CPU seconds
per audio second) on the cost probe's audio (60 s of speechocean762 `test/` speech, 60 s of brown noise;
../shared/tools/kws_cost_probe.py makes the same), 100 ms blocks, one keyword (and the probe's ten on the
speech). Each round runs one fresh process per side, alternating, so that a machine whose speed drifts moves
both alike; medians and minimums per side, and noise / speech. Run on one core:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/bench_kws_code_ab.py REV --rounds 7

REV's `runtime/` is unpacked with `git archive` into a temporary folder; a child process imports
`heron.runtime` from there (everything else, the bundle included, from the working tree). With `--whole`,
the A side is REV's whole spotter as it shipped: its `heron` package (sdk/ and runtime/) and its own
shipped bundle, against the working tree's package and bundle (e.g. a cost target stated against the
spotter of the day an issue was filed). Writes nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.abc, importlib.util, json, os, sys, time
from pathlib import Path
alt = sys.argv[1]
if alt.startswith("whole:"):  # REV's heron package (sdk/ as heron, runtime/ as heron.runtime) and its bundle
    sys.path.insert(0, alt[len("whole:"):])
elif alt != "-":
    class Finder(importlib.abc.MetaPathFinder):  # heron.runtime and its modules from REV's copy
        def find_spec(self, name, path=None, target=None):
            if name != "heron.runtime" and not name.startswith("heron.runtime."):
                return None
            rel = name.split(".")[2:]
            base = Path(alt, *rel)
            if base.is_dir() and (base / "__init__.py").is_file():
                return importlib.util.spec_from_file_location(name, base / "__init__.py",
                                                              submodule_search_locations=[str(base)])
            if base.with_suffix(".py").is_file():
                return importlib.util.spec_from_file_location(name, base.with_suffix(".py"))
            return None
    sys.meta_path.insert(0, Finder())
sys.path.insert(0, sys.argv[2])
from bench_kws_cost_ab import probe_audio, rtf
from heron import KeywordSpotter
import heron.runtime
speech, noise = probe_audio(Path(sys.argv[3]))
sp = KeywordSpotter.load(sys.argv[4] if len(sys.argv) > 4 else None)
sp.enroll("computer")
rtf(sp, speech[:16000 * 5])  # warm-up
one = {"speech": rtf(sp, speech), "noise": rtf(sp, noise)}
for text in ("hey heron", "view glass", "turn on the lights", "stop the music", "good morning", "open the door",
             "call my mother", "what time is it", "play the news"):  # the cost probe's ten keywords
    sp.enroll(text)
print(json.dumps({"runtime": str(Path(heron.runtime.__file__).parent), **one, "speech_10kw": rtf(sp, speech)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision whose runtime/ is the A side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bundle", default=None, help="bundle both sides load (default: the working tree's shipped one)")
    ap.add_argument("--whole", action="store_true",
                    help="the A side is REV's heron package (sdk/ and runtime/) with its own shipped bundle")
    a = ap.parse_args()
    import numpy as np

    from heron.runtime.metrics import machine

    data = Path(os.environ.get("HERON_DATA", ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="heron-ab-") as tmp:
        if a.whole and a.bundle:
            raise SystemExit("--whole loads each side's own shipped bundle: leave out --bundle")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.rev, "runtime", *(["sdk"] if a.whole else [])],
                                 capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        if a.whole:  # REV's package as `heron`: sdk/ is the package, runtime/ its subpackage (pyproject's mapping)
            (Path(tmp) / "sdk").rename(Path(tmp) / "heron")
            (Path(tmp) / "runtime").rename(Path(tmp) / "heron" / "runtime")
        sides = {a.rev: f"whole:{tmp}" if a.whole else str(Path(tmp) / "runtime"), "working tree": "-"}
        res = {s: {"speech": [], "noise": [], "speech_10kw": []} for s in sides}
        for _ in range(a.rounds):
            for side, alt in sides.items():
                cmd = [sys.executable, "-c", CHILD, alt, str(ROOT / "scripts"), str(data)] + ([a.bundle] if a.bundle else [])
                out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                if (alt == "-") == out["runtime"].startswith(tmp):
                    raise SystemExit(f"the child imported heron.runtime from {out['runtime']}: the A/B is not what it says")
                for k in res[side]:
                    res[side][k].append(out[k])
    for side, r in res.items():
        med = {k: float(np.median(v)) for k, v in r.items()}
        print(json.dumps({"runtime": side, "rtf_speech_median": round(med["speech"], 5), "rtf_speech_min": round(min(r["speech"]), 5),
                          "rtf_noise_median": round(med["noise"], 5), "rtf_noise_min": round(min(r["noise"]), 5),
                          "rtf_speech_10kw_median": round(med["speech_10kw"], 5), "rtf_speech_10kw_min": round(min(r["speech_10kw"]), 5),
                          "noise_over_speech": round(med["noise"] / med["speech"], 3), "rounds": a.rounds, "machine": machine()}))
    (x, rx), (y, ry) = res.items()  # the working tree over REV, median over median and min over min
    print(json.dumps({f"working tree / {x}": {k: [round(float(np.median(ry[k]) / np.median(rx[k])), 2),
                                                  round(min(ry[k]) / min(rx[k]), 2)] for k in rx}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
