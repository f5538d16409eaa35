#!/usr/bin/env bash
# The language-model experiments behind BENCHMARKS.md and the shipped LM artifacts:
#   models/weights/lm-nano (dial-k MoE target + MTP adapter), runtime/assets/lm-draft (ONNX draft).
# CPU, 2 threads: about 90 minutes in all. A step whose run folder already holds a finished run is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
H=".venv/bin/heron"
export HERON_WRITE_PACKAGE=1  # this script replaces the shipped LM artifacts (heron refuses --out there otherwise)
R=${RUNS:-runs/lm}
PRE=${PRE_STEPS:-2000}   # pretraining steps
FT=${FT_STEPS:-600}      # fine-tuning budget shared by PHDS and every oracle
done_() { [ -f "$1/config.json" ] && grep -q "\"steps\": $2," "$1/config.json"; }
run() { local out=$1 steps=$2; shift 2; done_ "$out" "$steps" || $H lm train --out "$out" --steps "$steps" "$@"; }

# 1. MoE base (E=8, K=4), then dial-k (PHDS) and oracles at fixed k, same fine-tuning budget
run $R/nano-base $PRE --preset nano
run $R/nano-phds $FT --init $R/nano-base --phds --k-min 2 --k-max 4 --lr 1e-3
for k in 2 3 4; do run $R/nano-oracle-k$k $FT --init $R/nano-base --fixed-k $k --lr 1e-3; done
# ... and a stronger anchor curriculum (last 40% of steps, k-min probability rising to 0.8)
run $R/nano-phds-anchor $FT --init $R/nano-base --phds --k-min 2 --k-max 4 --lr 1e-3 --anchor-frac 0.4 --anchor-prob 0.8
# 2. the draft model for speculative decoding (shares the target's tokenizer)
run $R/draft $PRE --preset tiny --tokenizer-from $R/nano-base
# 3. the shipped artifacts: int8 target, its early-exit head and MTP adapter (trained on the int8 weights)
W=models/weights/lm-nano
$H lm release $R/nano-phds --out $W --int8
$H lm train-exit --model $W --out $W --layer 2 --steps 300
$H lm train-mtp --model $W --out $R/mtp-long --steps 1500 --threads 1
rm -rf $W/mtp && mkdir -p $W/mtp && cp $R/mtp-long/mtp.safetensors $R/mtp-long/mtp.json $W/mtp/
rm -rf runtime/assets/lm-draft && $H lm export $R/draft --out runtime/assets/lm-draft
# (the shipped draft was exported as format heron-lm-onnx/1 and its manifest rewritten to /2, the shared file
# table, on 2026-12-03 without re-exporting: same graph and tokenizer files, a new identity, re-pinned below)
.venv/bin/python scripts/pin_bundles.py
# 4. a 1.5x larger MoE (6 layers) trained on the same data and steps, for Roster of Experts; evaluations
run $R/nano-l $((PRE + FT)) --preset nano-l
[ -f $R/eval-anchor.json ] || $H lm eval --model $R/nano-phds-anchor --oracle 2=$R/nano-oracle-k2 \
    3=$R/nano-oracle-k3 4=$R/nano-oracle-k4 --json $R/eval-anchor.json
[ -f $R/eval.json ] || $H lm eval --model $R/nano-phds --oracle 2=$R/nano-oracle-k2 3=$R/nano-oracle-k3 \
    4=$R/nano-oracle-k4 --roe-samples 1 2 4 8 --larger $R/nano-l --json $R/eval.json
# 5. a dense model converted by DynaMoE, against static-width truncation
run $R/nano-dense $((PRE + FT)) --preset nano-dense
[ -f $R/dynamoe/dynamoe.json ] || $H lm dynamoe --dense $R/nano-dense --out $R/dynamoe --steps 300
