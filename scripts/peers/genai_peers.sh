#!/usr/bin/env bash
# Builds (once, cached) ONNX Runtime GenAI's int4 CPU model of SmolLM2 for
# `scripts/bench_smollm2.py --backends ...,ort-genai` (and `heron lm bench --peers`, which sets PEERS_DIR to
# OUT/peers): a side venv $PEERS_DIR/genai-venv (default PEERS_DIR: runs) with onnxruntime-genai,
# SmolLM2's GGUF rebuilt as a plain LlamaForCausalLM folder ($PEERS_DIR/smol-hf: the builder reads Hugging Face
# folders or float GGUF files, and transformers will not save a GGUF-loaded model), then GenAI's own model
# builder (int4, CPU) run with heron's Python ($HERON_PYTHON, default .venv/bin/python: it needs torch,
# transformers and onnx_ir, which heron's train extra has) -> $PEERS_DIR/smol-genai. A few minutes. Nothing enters
# heron's own venv or its default set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${PEERS_DIR:-runs}
V=$P/genai-venv
PY=${HERON_PYTHON:-.venv/bin/python}
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c "import onnxruntime_genai" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q numpy "onnxruntime-genai==${GENAI_VERSION:-0.18.0}"
fi
if [ ! -f "$P/smol-hf/config.json" ]; then
  HF="$P/smol-hf" "$PY" - <<'PY'
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from heron.paths import named_lm_path

path = named_lm_path("smollm2")
src = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
model = LlamaForCausalLM(src.config)
model.load_state_dict(src.state_dict())
out = os.environ["HF"]
model.save_pretrained(out, safe_serialization=True)
AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
import json  # a plain fp32 folder: drop the GGUF record, which the builder would read as a quantized model
config = json.load(open(f"{out}/config.json"))
config.pop("quantization_config", None)
json.dump(config, open(f"{out}/config.json", "w"), indent=2)
PY
fi
if [ ! -f "$P/smol-genai/genai_config.json" ]; then
  B=$(echo "$V"/lib/python3*/site-packages/onnxruntime_genai/models/builder.py)
  "$PY" "$B" -i "$P/smol-hf" -o "$P/smol-genai" -p int4 -e cpu -c "$P/smol-genai-cache"
fi
"$V/bin/python" -c "import onnxruntime_genai as og; print('onnxruntime-genai', og.__version__)"
