#!/usr/bin/env bash
# Rebuild the shipped keyword-spotting model from scratch, exactly as it was built (see
# models/weights/kws-base/MODEL_CARD.md). About 1 h on 2 CPU cores; needs the TTS engines
# (make setup) and `pip install heron[dev]`.
set -euo pipefail
cd "$(dirname "$0")/.."
H=.venv/bin/heron
$H kws train --preset default --out runs/kws-base --steps 7000 --no-progress      # encoder, seed 0 (51 min)
$H kws release runs/kws-base --out models/weights/kws-base                      # fp16 weights, no optimizer
# Representative phoneme vectors (CTC forced alignment) for DSP word times: `heron kws train-matcher`
# writes them into runs/matcher/matcher.safetensors; copy them next to the weights:
$H kws train-matcher --encoder models/weights/kws-base --out runs/matcher
.venv/bin/python -c "from heron.models.train_matcher import load_matcher; import numpy as np; \
np.save('models/weights/kws-base/phoneme_table.npy', load_matcher('runs/matcher')[2], allow_pickle=False)"
# Z-norm background bank + logistic calibration on held-out TTS voices; default threshold 0.35 was
# chosen with models/calibrate_kws.py:real_negative_threshold on ../shared real non-keyword audio.
rm -rf runtime/assets/kws
$H kws export --checkpoint models/weights/kws-base --out runtime/assets/kws --threshold 0.35 --int8-only --recalibrate
# keep the fitted calibration with the weights, so a plain `heron kws export` reproduces the shipped bundle
.venv/bin/python -c "import json; c = json.load(open('runtime/assets/kws/manifest.json'))['calibration']; \
c.pop('znorm'); open('models/weights/kws-base/calibration.json', 'w').write(json.dumps(c, indent=1))"
# The trained second stage itself (verifier) is not shipped: it did not beat the first stage (BENCHMARKS.md);
# `heron kws export --matcher runs/matcher` adds it to a bundle.
