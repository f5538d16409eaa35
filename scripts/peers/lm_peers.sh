#!/usr/bin/env bash
# Builds (once, cached) the side venv $PEERS_DIR/lm-peers-venv (default PEERS_DIR: runs) with llama-cpp-python
# 0.3.36, compiled from source (cmake; 25-45 min on 2 cores), for `scripts/bench_smollm2.py --backends
# ...,llama.cpp` (and `heron lm bench --peers`, which sets PEERS_DIR to OUT/peers). Nothing enters heron's own venv
# or its default set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
V=${PEERS_DIR:-runs}/lm-peers-venv
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q numpy
  CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2} "$V/bin/pip" install -q --no-cache-dir llama-cpp-python==0.3.36
fi
"$V/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
