"""What would move Mirror-SD against draft SD: heron lm bench's own predictions, fed a run's measured costs with one
thing changed at a time.

    .venv/bin/python scripts/mirror_whatif.py runs/chat-s35.json        # a heron lm bench report (--json FILE); prints only

The report's costs (the target on every thread, its verify and the draft's step; `costs_beside`: both timed beside
each other, the target one thread short) and its acceptance (the draft SD rows' alpha) go through
heron.bench_lm.predicted_serial (draft SD, the best of windows 8-20) and predicted_ahead (Mirror-SD with windows as
the draft writes them, the best of windows 8-24; a window's verify priced linearly from the one the report timed, as
predicted_ahead prices it), as `heron lm bench` predicts beside its measured rows; then the
same with the acceptance, the draft's step, the cost of verifying more tokens, or the target's speed on the one thread
Mirror-SD leaves it changed. Each line: both predicted speed-ups over plain decoding and their ratio (Mirror-SD over
draft SD's best). Predictions, not measurements: they say which change could lift the ratio, and by about how much.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def predictions(costs: dict, beside: dict, alpha: float, draft: float = 1.0, verify: float = 1.0,
                one_thread: float = 1.0) -> tuple[float, float]:
    """(draft SD's best predicted speed-up, Mirror-SD's) with the draft's step times `draft`, the verify's cost above
    one step (beta - 1) times `verify`, and the target's step beside the draft times `one_thread`."""
    from heron.bench_lm import predicted_ahead, predicted_serial

    c, b = dict(costs), dict(beside)
    c["draft_step_s"] *= draft
    b["draft_step_s"] *= draft
    b["target_step_s"] *= one_thread
    b["beta"] = 1 + (b["beta"] - 1) * verify
    beta = 1 + (c["beta"] - 1) * verify

    def serial(g: int) -> float:  # a window of g words verified at predicted_ahead's price: linear from the timed one
        return predicted_serial(alpha, g, {**c, "verify_s": c["target_step_s"] * (1 + (beta - 1) * g / c["gamma"])})
    return max(serial(g) for g in (8, 12, 16, 20)), max(predicted_ahead(alpha, g, c, b) for g in (8, 12, 16, 20, 24))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("report", help="a `heron lm bench --methods none draft mirror ... --json FILE` report")
    args = ap.parse_args()
    try:
        report = json.loads(Path(args.report).read_text())
        costs, beside = report["costs"], report["costs_beside"]
        alphas = [r["alpha"] for r in report["rows"] if r.get("method") == "draft" and r.get("alpha") is not None]
        if not alphas or not beside.get("beside"):
            raise KeyError("draft SD rows with alpha and costs timed beside the draft")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{args.report}: not a heron lm bench report with draft SD and Mirror-SD rows ({e})", file=sys.stderr)
        return 2
    alpha = float(np.mean(alphas))
    lines = [("as measured", {}), ("acceptance +0.015", dict(alpha=min(0.999, alpha + 0.015))),
             ("acceptance -0.015", dict(alpha=alpha - 0.015)), ("draft step x0.7", dict(draft=0.7)),
             ("draft step x0.5", dict(draft=0.5)), ("verify's extra tokens x0.5", dict(verify=0.5)),
             ("verify's extra tokens free", dict(verify=0.0)),
             ("target beside the draft as fast as on every thread",
              dict(one_thread=costs["target_step_s"] / beside["target_step_s"]))]
    print(f"{args.report}: alpha {alpha:.3f}, c {costs['c']:.3f} (beside {beside['c']:.3f}), beta {costs['beta']:.2f} "
          f"(beside {beside['beta']:.2f}) at a timed window of {costs['gamma']} (longer windows priced linearly from "
          "it); predicted speed-ups over plain decoding")
    for name, change in lines:
        sd, mirror = predictions(costs, beside, **{"alpha": alpha, **change})
        print(f"  {name:52s} draft SD {sd:5.2f}x  Mirror-SD {mirror:5.2f}x  ratio {mirror / sd:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
