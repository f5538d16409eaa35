#!/usr/bin/env bash
# Rebuild the shipped keyword-spotting model from scratch, exactly as it was built (see
# models/weights/kws-base/MODEL_CARD.md). About 1.5 h on 2 CPU cores; needs the TTS engines
# (make setup) and `pip install heron[dev]`.
set -euo pipefail
cd "$(dirname "$0")/.."
H=.venv/bin/heron
$H train kws --preset default --out runs/kws-base --steps 7000 --no-progress      # encoder, seed 0
$H train release runs/kws-base --out models/weights/kws-base                      # fp16 weights, no optimizer
$H train matcher --encoder models/weights/kws-base --out runs/matcher             # 2nd stage + ablations
$H export --checkpoint models/weights/kws-base --out runtime/assets/kws --recalibrate
