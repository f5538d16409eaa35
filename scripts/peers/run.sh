#!/usr/bin/env bash
# Peers on the developers' real-keyword check, in a side venv (runs/peers-venv; nothing enters heron's):
# Porcupine 1.9.5 (built-in snowboy / view glass), PocketSphinx 5.1.1 keyphrase search and
# EfficientWord-Net 1.0.5 (espeak-ng references). Needs ../shared (data and the check) and espeak-ng.
# Usage: scripts/peers/run.sh [--json runs/peers.json] [--engines ...] [--keywords ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
V=runs/peers-venv
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c "import pvporcupine, pocketsphinx, eff_word_net" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q numpy soundfile onnxruntime pvporcupine==1.9.5 pocketsphinx==5.1.1
  "$V/bin/pip" install -q --no-deps efficientword-net==1.0.5  # its declared deps pull pyaudio and twine
fi
OMP_NUM_THREADS=1 "$V/bin/python" scripts/peers/peers.py "$@"
