"""The real-keyword check at a fixed threshold: what a user of the shipped bundle gets out of the box.

    .venv/bin/python scripts/check_at_threshold.py [--threshold T] [--keywords snowboy,athena] [--json OUT]

../shared/tools/eval_real_keywords.py reports rank figures (AUC, EER, FRR at 1 false accept per hour: each
keyword's own threshold read off its negatives). A device runs one threshold for every keyword: the bundle's
default (its manifest's calibration threshold, 0.27 for the shipped one) unless the user moves it. This script
scores the same files with the same rules (the check's own pool, positives / negatives rule and
`heron kws score` calls, imported from the check tool; HERON_BUNDLE=DIR grades another bundle) and reports, per
keyword, the false-reject rate and the false accepts per hour of negatives at that one threshold. Writes only
--json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

CHECK_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threshold", type=float, default=None, help="default: the bundle's own default threshold")
    ap.add_argument("--keywords", default=None, help="comma-separated check keywords (default: all five)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    if not (CHECK_TOOL / "eval_real_keywords.py").is_file():
        print(f"the check tool is not at {CHECK_TOOL}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(CHECK_TOOL))
    import eval_real_keywords as check

    from heron.runtime.spotter import KeywordSpotter

    thr = a.threshold
    if thr is None:
        thr = float(KeywordSpotter.load(os.environ.get("HERON_BUNDLE")).calibration["threshold"])
    if not 0.0 < thr < 1.0:
        raise SystemExit(f"--threshold must lie in (0, 1), got {thr}")
    want = check.KEYWORDS if a.keywords is None else {k: check.KEYWORDS[k] for k in a.keywords.split(",")}
    rows = check.load_pool()
    res = {}
    for kw, text in want.items():
        sc = check.score(sys.executable, text, [r["path"] for r in rows])
        pos, neg, hours = [], [], 0.0
        for r in rows:
            s = sc.get(r["path"], 0.0)  # unscored: a miss, or a correct rejection (the check's rule)
            if r["transcript"] == text:
                pos.append(s)
            elif not check.contains(r["transcript"], text):
                neg.append(s)
                hours += r["duration_s"] / 3600
        pos, neg = np.array(pos), np.array(neg)
        res[kw] = {"frr": round(100 * float((pos < thr).mean()), 1), "false_accepts": int((neg >= thr).sum()),
                   "fa_per_hour": round(float((neg >= thr).sum()) / hours, 2), "n_pos": len(pos), "n_neg": len(neg),
                   "neg_hours": round(hours, 3)}
        v = res[kw]
        print(f"{kw:15s} threshold {thr:.3f}: FRR {v['frr']:5.1f}%  false accepts {v['false_accepts']} "
              f"({v['fa_per_hour']} per hour of {v['neg_hours']} h)  pos {v['n_pos']}")
    mean = {"frr": round(float(np.mean([v["frr"] for v in res.values()])), 1),
            "fa_per_hour": round(float(np.mean([v["fa_per_hour"] for v in res.values()])), 2)}
    print(f"mean FRR {mean['frr']}%  mean false accepts per hour {mean['fa_per_hour']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"threshold": thr, "per_keyword": res, "mean": mean}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
