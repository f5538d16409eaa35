#!/usr/bin/env bash
# Measure an encoder checkpoint the way a shipped one is measured: export a bundle (real-speech Z-norm
# bank, calibration refit), the developers' real-keyword check, and phoneme error rates on the real
# `test/` splits and held-out TTS voices. Usage: scripts/eval_kws_candidate.sh CHECKPOINT NAME [THREADS]
# Writes only under runs/NAME-*. Needs ../shared/data and ../shared/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
ck=$1; name=$2; threads=${3:-2}
H=.venv/bin/heron
D=../shared/data
REAL=(--background-data $D/an4/manifest.tsv --background-data $D/speechocean762/manifest.tsv)
rm -rf "runs/$name-bundle"
$H kws export --checkpoint "$ck" --out "runs/$name-bundle" --int8-only "${REAL[@]}" > "runs/$name-export.log"
HERON_BUNDLE="runs/$name-bundle" .venv/bin/python ../shared/tools/eval_real_keywords.py .venv/bin/python \
  --json "runs/$name-check.json" | tee "runs/$name-check.txt"
$H kws per --checkpoint "$ck" --threads "$threads" --json "runs/$name-per.json" \
  --data $D/an4/manifest.tsv --data $D/speechocean762/manifest.tsv --data $D/speech_commands/manifest.tsv > /dev/null
.venv/bin/python -c "import json,sys; r=json.load(open('runs/$name-per.json')); \
print('PER', {k.split('/')[-2] if '/' in k else k: v['per'] for k, v in r.items() if isinstance(v, dict)})"
